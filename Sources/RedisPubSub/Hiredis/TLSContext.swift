import COpenSSL

/// What a TLS connection trusts and presents (the engine's side of the TLS configuration).
struct TLSSettings: Sendable, Hashable {
    /// PEM file of the certificate authorities to trust; with `caDirectory` also `nil`, the system's trust store.
    var caFile: String?
    /// A directory of hashed CA certificates (`openssl rehash`).
    var caDirectory: String?
    /// PEM certificate chain and private key presented to the server (mutual TLS), or by a server.
    var certificateFile: String?
    var keyFile: String?
    /// Verify the peer's chain (and, for a client, its name). Off only when asked for, as insecure.
    var verifiesPeer = true
    /// The oldest protocol version accepted.
    var minimumVersion: Int32 = TLS1_2_VERSION
}

/// An OpenSSL `SSL_CTX`: the trust store, certificate and protocol settings shared by a client's connections (or a
/// test server's). Immutable once made; OpenSSL allows one context to be used by sessions on any thread.
final class TLSContext: @unchecked Sendable {
    // @unchecked Sendable because: the SSL_CTX is configured in `init` and only read afterwards (by SSL_new), which
    // OpenSSL documents as thread-safe.
    let context: OpaquePointer
    let isServer: Bool
    /// Whether this side presents a certificate (a client doing mutual TLS).
    let presentsCertificate: Bool

    init(_ settings: TLSSettings, server: Bool = false) throws(RedisError) {
        guard let context = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method()) else {
            throw TLSContext.error(.invalidConfiguration, "cannot create a TLS context")
        }
        self.context = context
        self.isServer = server
        self.presentsCertificate = settings.certificateFile != nil
        guard copenssl_set_min_proto_version(context, settings.minimumVersion) == 1 else {
            throw TLSContext.error(.invalidConfiguration, "unsupported minimum TLS version")
        }
        // A write may return after part of a record, and the caller retries with a buffer that has moved.
        _ = copenssl_set_mode(context, Int(SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER))
        copenssl_disable_renegotiation(context)
        if settings.caFile != nil || settings.caDirectory != nil {
            guard SSL_CTX_load_verify_locations(context, settings.caFile, settings.caDirectory) == 1 else {
                throw TLSContext.error(
                    .invalidConfiguration,
                    "cannot load the CA certificates from \(settings.caFile ?? settings.caDirectory ?? "")")
            }
        } else if !server {
            guard SSL_CTX_set_default_verify_paths(context) == 1 else {
                throw TLSContext.error(.invalidConfiguration, "cannot load the system's trusted certificates")
            }
        }
        // An encrypted key would make OpenSSL ask for its pass phrase on the terminal, blocking the caller: refuse
        // it instead (the load fails, and the error below names the file).
        SSL_CTX_set_default_passwd_cb(context) { _, _, _, _ in 0 }
        if let certificate = settings.certificateFile {
            guard SSL_CTX_use_certificate_chain_file(context, certificate) == 1 else {
                throw TLSContext.error(.invalidConfiguration, "cannot load the certificate \(certificate)")
            }
            let key = settings.keyFile ?? certificate
            guard SSL_CTX_use_PrivateKey_file(context, key, SSL_FILETYPE_PEM) == 1 else {
                throw TLSContext.error(.invalidConfiguration, "cannot load the private key \(key)")
            }
            guard SSL_CTX_check_private_key(context) == 1 else {
                throw TLSContext.error(.invalidConfiguration, "the private key \(key) does not match \(certificate)")
            }
        } else if settings.keyFile != nil {
            throw RedisError(.invalidConfiguration, "a TLS private key needs its certificate file too")
        }
        let mode = settings.verifiesPeer ? SSL_VERIFY_PEER | (server ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0) : SSL_VERIFY_NONE
        SSL_CTX_set_verify(context, mode, nil)
    }

    deinit {
        SSL_CTX_free(context)
    }

    /// An error naming `what`, with OpenSSL's first queued reason (the queue is cleared).
    static func error(_ code: RedisError.Code, _ what: String) -> RedisError {
        let reason = queuedReason()
        return RedisError(code, reason.isEmpty ? what : "\(what): \(reason)")
    }

    /// OpenSSL's queued errors, as text ("certificate verify failed", "wrong version number", ...), then cleared.
    static func queuedReason() -> String {
        var reasons: [String] = []
        while case let code = ERR_get_error(), code != 0 {
            if let text = ERR_reason_error_string(code) { reasons.append(String(cString: text)) }
        }
        return reasons.joined(separator: "; ")
    }
}
