extension RedisConfiguration {
    /// TLS for a connection: what to trust, what to present, which name to verify.
    ///
    /// The package speaks TLS itself, through the system's OpenSSL, on every hiredis version. A `rediss://` URL
    /// turns it on with the defaults: the server's certificate chain is checked against the system's trust store and
    /// its name against the host in the URL.
    ///
    /// ```swift
    /// var configuration = try RedisConfiguration(url: "rediss://cache.internal:6380")
    /// configuration.tls?.trust = .certificateAuthorityFile("/etc/redis/ca.pem")       // a private CA
    /// configuration.tls?.certificateFile = "/etc/redis/client.pem"                   // mutual TLS
    /// configuration.tls?.privateKeyFile = "/etc/redis/client.key"
    /// ```
    ///
    /// Files are read when a connection (``RedisConnection``, ``Publisher``, ``Subscriber``) is made; a file that is
    /// missing or does not parse fails that with ``RedisError/Code/invalidConfiguration`` naming the file. Private
    /// keys must not be encrypted with a pass phrase.
    public struct TLS: Hashable, Sendable, CustomStringConvertible {
        /// What the server's certificate must chain to.
        public enum Trust: Hashable, Sendable {
            /// The system's trust store (on Debian and Ubuntu `/etc/ssl/certs`, from the `ca-certificates` package).
            case systemStore
            /// The CA certificates in this PEM file, and no others.
            case certificateAuthorityFile(String)
            /// The CA certificates in this directory, named by their subject hash (`openssl rehash`), and no others.
            case certificateAuthorityDirectory(String)
            /// No verification at all: any certificate, for any name, is accepted. The traffic is encrypted, but
            /// anyone on the path can pose as the server. Meant for a throwaway test server only; every connection
            /// logs a warning.
            case insecureNoVerification
        }

        /// A version of the TLS protocol.
        public enum ProtocolVersion: Int, Hashable, Sendable, Comparable, CustomStringConvertible {
            /// TLS 1.2.
            case tls1_2 = 0x0303
            /// TLS 1.3.
            case tls1_3 = 0x0304

            /// `TLS 1.2` or `TLS 1.3`.
            public var description: String { self == .tls1_2 ? "TLS 1.2" : "TLS 1.3" }

            /// Older versions sort first.
            public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
        }

        /// What the server's certificate must chain to. Default: ``Trust/systemStore``.
        public var trust: Trust
        /// A PEM file with the client certificate (and any intermediates after it) for mutual TLS
        /// (`tls-auth-clients yes` on the server); `nil` presents none.
        public var certificateFile: String?
        /// The PEM file with the client certificate's private key; `nil` reads it from ``certificateFile``.
        public var privateKeyFile: String?
        /// The name sent in SNI and checked against the certificate; `nil` uses the endpoint's host. An IP address
        /// is checked against the certificate's IP address entries and sends no SNI.
        public var serverName: String?
        /// The oldest protocol version accepted. Default: ``ProtocolVersion/tls1_2``.
        public var minimumVersion: ProtocolVersion

        /// Verified against the system's trust store and the endpoint's host, no client certificate, TLS 1.2 or later.
        public static let `default` = TLS()

        /// Creates TLS settings; the defaults are those of a `rediss://` URL.
        public init(
            trust: Trust = .systemStore,
            certificateFile: String? = nil,
            privateKeyFile: String? = nil,
            serverName: String? = nil,
            minimumVersion: ProtocolVersion = .tls1_2
        ) {
            self.trust = trust
            self.certificateFile = certificateFile
            self.privateKeyFile = privateKeyFile
            self.serverName = serverName
            self.minimumVersion = minimumVersion
        }

        /// Whether the server's certificate and name are checked (everything but ``Trust/insecureNoVerification``).
        public var verifiesServer: Bool { trust != .insecureNoVerification }

        /// The settings in a line, e.g. `TLS (CA file /etc/redis/ca.pem, client certificate /etc/redis/client.pem)`.
        public var description: String {
            var parts: [String] = []
            switch trust {
            case .systemStore: parts.append("system trust store")
            case .certificateAuthorityFile(let path): parts.append("CA file \(path)")
            case .certificateAuthorityDirectory(let path): parts.append("CA directory \(path)")
            case .insecureNoVerification: parts.append("INSECURE: no verification")
            }
            if let certificateFile { parts.append("client certificate \(certificateFile)") }
            if let serverName { parts.append("server name \(serverName)") }
            if minimumVersion != .tls1_2 { parts.append("\(minimumVersion) or later") }
            return "TLS (\(parts.joined(separator: ", ")))"
        }

        func validate() throws(RedisError) {
            switch trust {
            case .certificateAuthorityFile(let path), .certificateAuthorityDirectory(let path):
                guard !path.isEmpty else { throw RedisError(.invalidConfiguration, "TLS: the CA path is empty") }
            case .systemStore, .insecureNoVerification: break
            }
            if certificateFile?.isEmpty == true { throw RedisError(.invalidConfiguration, "TLS: the certificate path is empty") }
            if privateKeyFile != nil && certificateFile == nil {
                throw RedisError(.invalidConfiguration, "TLS: a private key needs its certificate file (certificateFile)")
            }
            if privateKeyFile?.isEmpty == true { throw RedisError(.invalidConfiguration, "TLS: the private key path is empty") }
            if let serverName, serverName.isEmpty || serverName.contains(where: { $0.isWhitespace || $0 == "/" }) {
                throw RedisError(.invalidConfiguration, "TLS: the server name '\(serverName)' is not a host name")
            }
        }

        /// The engine's settings.
        var settings: TLSSettings {
            var settings = TLSSettings()
            switch trust {
            case .systemStore: break
            case .certificateAuthorityFile(let path): settings.caFile = path
            case .certificateAuthorityDirectory(let path): settings.caDirectory = path
            case .insecureNoVerification: settings.verifiesPeer = false
            }
            settings.certificateFile = certificateFile
            settings.keyFile = privateKeyFile
            settings.minimumVersion = Int32(minimumVersion.rawValue)
            return settings
        }
    }
}
