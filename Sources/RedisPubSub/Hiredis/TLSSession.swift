import COpenSSL
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// One TLS connection's cryptography over memory buffers: the owner moves ciphertext between the socket and the
/// session (``receive(_:)``, ``takeOutput(into:)``), and plaintext between the session and hiredis (``read(into:)``,
/// ``write(_:)``). The session never touches a socket, so the loop's non-blocking I/O stays the one there is, and the
/// same code serves hiredis 0.14 (which has no TLS) and 1.x. Confined to one thread at a time (the loop's).
final class TLSSession {
    private let ssl: OpaquePointer
    /// Ciphertext from the peer, for OpenSSL to read.
    private let incoming: OpaquePointer
    /// Ciphertext OpenSSL wrote, for the owner to send.
    private let outgoing: OpaquePointer
    /// Keeps the `SSL_CTX` alive as long as the session.
    private let context: TLSContext
    /// The name the peer's certificate is checked against, for error messages.
    private let serverName: String?
    private(set) var isHandshakeComplete = false

    /// A client session verifying `serverName` (a host name, or an IP address checked against the certificate's IP
    /// entries) when the context verifies peers; SNI carries a host name. A server session when the context is one.
    init(context: TLSContext, serverName: String? = nil) throws(RedisError) {
        guard let ssl = SSL_new(context.context), let incoming = BIO_new(BIO_s_mem()), let outgoing = BIO_new(BIO_s_mem())
        else { throw TLSContext.error(.invalidConfiguration, "cannot create a TLS session") }
        copenssl_mem_retry_when_empty(incoming)
        copenssl_mem_retry_when_empty(outgoing)
        SSL_set_bio(ssl, incoming, outgoing)  // the session owns both from now on
        self.ssl = ssl
        self.incoming = incoming
        self.outgoing = outgoing
        self.context = context
        self.serverName = serverName
        if context.isServer {
            SSL_set_accept_state(ssl)
            return
        }
        SSL_set_connect_state(ssl)
        guard let serverName, !serverName.isEmpty else { return }
        if Self.isIPAddress(serverName) {
            guard X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), serverName) == 1 else {
                throw TLSContext.error(.invalidConfiguration, "cannot verify the IP address \(serverName)")
            }
        } else {
            guard copenssl_set_server_name(ssl, serverName) == 1, SSL_set1_host(ssl, serverName) == 1 else {
                throw TLSContext.error(.invalidConfiguration, "cannot verify the host name \(serverName)")
            }
        }
    }

    deinit {
        SSL_free(ssl)  // frees both BIOs
    }

    // MARK: Ciphertext

    /// Ciphertext that arrived from the socket.
    func receive(_ bytes: UnsafeRawBufferPointer) {
        var offset = 0
        while offset < bytes.count {
            let written = BIO_write(incoming, bytes.baseAddress! + offset, Int32(min(bytes.count - offset, Int(Int32.max))))
            guard written > 0 else { return }  // a memory BIO only fails when out of memory
            offset += Int(written)
        }
    }

    /// Whether received ciphertext or decrypted plaintext waits to be read (a record cut short by a closed socket).
    var holdsUnreadBytes: Bool { BIO_ctrl_pending(incoming) > 0 || SSL_has_pending(ssl) == 1 }

    /// Whether ciphertext waits to be sent.
    var hasOutput: Bool { BIO_ctrl_pending(outgoing) > 0 }

    /// Appends the ciphertext waiting to be sent to `buffer`.
    func takeOutput(into buffer: inout [UInt8]) {
        let pending = Int(BIO_ctrl_pending(outgoing))
        guard pending > 0 else { return }
        // BIO_read copies out of the memory BIO; then one append.
        let taken = [UInt8](unsafeUninitializedCapacity: pending) { storage, initialized in
            initialized = max(0, Int(BIO_read(outgoing, storage.baseAddress!, Int32(pending))))
        }
        buffer.append(contentsOf: taken)
    }

    // MARK: Handshake

    /// Advances the handshake with what has arrived. Returns `true` once it is complete; `false` while it needs
    /// more from the peer (send ``takeOutput(into:)`` first).
    ///
    /// - Throws: ``RedisError``: ``RedisError/Code/invalidConfiguration`` when the peer's certificate does not verify
    ///   (naming why: an unknown CA, a name mismatch, an expired certificate), ``RedisError/Code/protocolError`` for
    ///   anything else the handshake could not get past (a peer that does not speak TLS, a refused certificate).
    func handshake() throws(RedisError) -> Bool {
        if isHandshakeComplete { return true }
        ERR_clear_error()  // SSL_get_error reads the thread's queue: leave nothing from elsewhere in it
        let result = SSL_do_handshake(ssl)
        if result == 1 {
            isHandshakeComplete = true
            return true
        }
        switch SSL_get_error(ssl, result) {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            return false
        default:
            // The result is recorded even when nothing is verified: consult it only when verifying.
            let verification = SSL_get_verify_result(ssl)
            if SSL_get_verify_mode(ssl) != SSL_VERIFY_NONE, verification != X509_V_OK {
                _ = TLSContext.queuedReason()
                throw verificationFailure(verification)
            }
            throw failure("the TLS handshake failed")
        }
    }

    // MARK: Plaintext

    enum ReadResult: Equatable {
        /// This many bytes were decrypted into the buffer; there may be more.
        case bytes(Int)
        /// Nothing more can be decrypted without more ciphertext.
        case needsMore
        /// The peer closed the TLS session (`close_notify`).
        case closed
    }

    /// The most plaintext one TLS record carries.
    static let recordSize = 16 * 1024

    /// Decrypts into `buffer` as much as fits (one record with a buffer of ``recordSize``).
    ///
    /// - Throws: ``RedisError/Code/protocolError`` when the stream is not valid TLS (or a configuration error when
    ///   the peer's alert refuses this side's certificate).
    func read(into buffer: UnsafeMutableRawBufferPointer) throws(RedisError) -> ReadResult {
        ERR_clear_error()
        let result = SSL_read(ssl, buffer.baseAddress!, Int32(min(buffer.count, Int(Int32.max))))
        if result > 0 { return .bytes(Int(result)) }
        switch SSL_get_error(ssl, result) {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE: return .needsMore
        case SSL_ERROR_ZERO_RETURN: return .closed
        default: throw failure("TLS read failed")
        }
    }

    /// Encrypts as much of `bytes` as it can (all of it, in practice: the output goes to memory). Returns how many
    /// bytes were taken.
    ///
    /// - Throws: ``RedisError/Code/protocolError`` when the session failed.
    func write(_ bytes: UnsafeRawBufferPointer) throws(RedisError) -> Int {
        guard !bytes.isEmpty else { return 0 }
        var offset = 0
        while offset < bytes.count {
            ERR_clear_error()
            let result = SSL_write(ssl, bytes.baseAddress! + offset, Int32(min(bytes.count - offset, 1 << 30)))
            if result > 0 {
                offset += Int(result)
                continue
            }
            switch SSL_get_error(ssl, result) {
            case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE: return offset
            default: throw failure("TLS write failed")
            }
        }
        return offset
    }

    /// Queues `close_notify` (send ``takeOutput(into:)`` before closing the socket).
    func shutdown() {
        if isHandshakeComplete { _ = SSL_shutdown(ssl) }
        _ = TLSContext.queuedReason()
    }

    // MARK: Errors

    /// The server's certificate did not verify: why, in words that say what to change.
    private func verificationFailure(_ code: Int) -> RedisError {
        let reason = String(cString: X509_verify_cert_error_string(code))
        let hint: String
        switch Int32(code) {
        case X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH:
            hint = ": the server's certificate is not for \(serverName ?? "this host") (set TLS.serverName to the name it has)"
        case X509_V_ERR_CERT_HAS_EXPIRED:
            hint = ": the server's certificate has expired"
        case X509_V_ERR_CERT_NOT_YET_VALID:
            hint = ": the server's certificate is not valid yet (is the clock right?)"
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY, X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN,
            X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT, X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE,
            X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
            hint = ": the server's certificate is not signed by a trusted CA (set TLS.trust to the CA that signed it)"
        default:
            hint = ""
        }
        return RedisError(.invalidConfiguration, "TLS certificate verification failed (\(reason))\(hint)")
    }

    /// A failed TLS operation, with OpenSSL's reasons. A server's alert refusing this client's certificate, or no
    /// protocol version both sides accept, is a configuration to fix (not retried); anything else a protocol error.
    private func failure(_ what: String) -> RedisError {
        let reason = TLSContext.queuedReason()
        let lowered = reason.lowercased()
        let presents = context.presentsCertificate
        if lowered.contains("alert"), lowered.contains("certificate") || lowered.contains("unknown ca") {
            return presents
                ? RedisError(.invalidConfiguration, "the server refused this client's TLS certificate (\(reason))")
                : RedisError(
                    .invalidConfiguration,
                    "the server requires a client certificate (\(reason)): set TLS.certificateFile and privateKeyFile")
        }
        if lowered.contains("alert"), lowered.contains("access denied") {
            return RedisError(.invalidConfiguration, "the server denied this client access during the TLS handshake (\(reason))")
        }
        if lowered.contains("alert handshake failure") {
            // TLS 1.2's answer to a missing client certificate, and to parameters the server does not accept.
            return RedisError(
                .invalidConfiguration,
                "the server refused the TLS handshake (\(reason)): "
                    + (presents
                        ? "it accepts none of this client's protocol versions or ciphers, or not its certificate"
                        : "it may require a client certificate (set TLS.certificateFile and privateKeyFile), or accept "
                            + "none of this client's protocol versions or ciphers"))
        }
        if lowered.contains("protocol version") || lowered.contains("unsupported protocol")
            || lowered.contains("no protocols available")
        {
            return RedisError(.invalidConfiguration, "no TLS version that both sides accept (\(reason))")
        }
        return RedisError(.protocolError, reason.isEmpty ? what : "\(what): \(reason)")
    }

    private static func isIPAddress(_ name: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, name, &v4) == 1 || inet_pton(AF_INET6, name, &v6) == 1
    }
}
