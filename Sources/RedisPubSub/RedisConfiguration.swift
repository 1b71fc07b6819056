#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Where and how to connect: endpoint, credentials, database, client name and timeouts.
///
/// Most programs take it from a URL, by default the `REDIS_URL` environment variable:
///
/// ```swift
/// let configuration = try RedisConfiguration.fromEnvironment()   // REDIS_URL, else redis://127.0.0.1:6379
/// let other = try RedisConfiguration(url: "redis://app:s3cret@cache.internal:6380/2")
/// ```
///
/// ``description`` never shows the password.
public struct RedisConfiguration: Hashable, Sendable, CustomStringConvertible {
    /// Where the server listens.
    public enum Endpoint: Hashable, Sendable {
        /// A host name or IP address and a TCP port.
        case tcp(host: String, port: Int)
        /// A Unix domain socket's path.
        case unixSocket(path: String)
    }

    /// The URL used when `REDIS_URL` is not set.
    public static let defaultURL = "redis://127.0.0.1:6379"

    /// Where the server listens. Default: `127.0.0.1:6379`.
    public var endpoint: Endpoint
    /// The ACL user for `AUTH user password`; `nil` authenticates as the default user (`AUTH password`).
    public var username: String?
    /// The password; `nil` sends no `AUTH`.
    public var password: String?
    /// The logical database selected on connect (`SELECT`); 0 sends nothing. Pub/Sub ignores databases.
    public var database: Int
    /// The name set with `CLIENT SETNAME`, shown by `CLIENT LIST`; `nil` sends nothing.
    public var clientName: String?
    /// How long connecting may take: name resolution, the TCP or Unix connect and the handshake
    /// (`AUTH`, `SELECT`, `CLIENT SETNAME`, `PING`). At start-up, a server that refuses or cannot be reached is tried
    /// again (with the ``reconnect`` backoff) until this time is up, so services may start before Redis.
    /// It is also the limit of each reconnect attempt. Default: 10 seconds.
    public var connectTimeout: Duration
    /// How long a command may wait for its reply before it fails with ``RedisError/Code/timeout``. The late reply is
    /// discarded and the connection stays usable. Default: 5 seconds.
    public var commandTimeout: Duration
    /// How a lost connection comes back. Default: ``ReconnectPolicy/default`` (forever, jittered, within ~0.5 s).
    public var reconnect: ReconnectPolicy
    /// Subscriber connections only: after this long without receiving anything, send a PING; `nil` turns the health
    /// check off. Default: 5 seconds.
    public var healthCheckInterval: Duration?
    /// Subscriber connections only: how long the health check's PING may wait for its PONG before the connection is
    /// declared dead, closed and replaced. Default: 2 seconds.
    public var healthCheckTimeout: Duration

    /// Creates a configuration from its parts.
    public init(
        endpoint: Endpoint = .tcp(host: "127.0.0.1", port: 6379),
        username: String? = nil,
        password: String? = nil,
        database: Int = 0,
        clientName: String? = nil,
        connectTimeout: Duration = .seconds(10),
        commandTimeout: Duration = .seconds(5),
        reconnect: ReconnectPolicy = .default,
        healthCheckInterval: Duration? = .seconds(5),
        healthCheckTimeout: Duration = .seconds(2)
    ) {
        self.endpoint = endpoint
        self.username = username
        self.password = password
        self.database = database
        self.clientName = clientName
        self.connectTimeout = connectTimeout
        self.commandTimeout = commandTimeout
        self.reconnect = reconnect
        self.healthCheckInterval = healthCheckInterval
        self.healthCheckTimeout = healthCheckTimeout
    }

    /// Parses `redis://[[user]:password@]host[:port][/db]` or `unix:///path/to/socket[?db=N]`.
    ///
    /// User and password may be percent-encoded. IPv6 hosts go in brackets: `redis://[::1]:6379`.
    /// The port defaults to 6379 and the database to 0. A Unix URL may carry credentials as
    /// `unix://[user]:password@/path/to/socket`.
    ///
    /// - Throws: ``RedisError`` with ``RedisError/Code/invalidConfiguration`` saying what is wrong; the message shows
    ///   the URL with its password masked.
    public init(url: String) throws(RedisError) {
        self.init()
        let shown = Self.redact(url)
        func invalid(_ why: String) -> RedisError {
            RedisError(.invalidConfiguration, "invalid Redis URL '\(shown)': \(why)")
        }
        guard let schemeEnd = Self.schemeSeparator(in: url) else {
            throw invalid("expected redis://host[:port][/db] or unix:///path")
        }
        let scheme = url[..<schemeEnd.lowerBound].lowercased()
        var rest = Substring(url[schemeEnd.upperBound...])

        // Credentials: everything before the last '@' (passwords may contain '@' when percent-encoded or not).
        if let at = rest.lastIndex(of: "@") {
            let userInfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
            let user: Substring
            let pass: Substring?
            if let colon = userInfo.firstIndex(of: ":") {
                user = userInfo[..<colon]
                pass = userInfo[userInfo.index(after: colon)...]
            } else {
                // `redis://secret@host`: a lone user-info part is a password, as in most Redis clients.
                user = ""
                pass = userInfo
            }
            guard let decodedUser = Self.percentDecode(user), let decodedPass = pass.map(Self.percentDecode) ?? "" else {
                throw invalid("bad percent-encoding in the credentials")
            }
            username = decodedUser.isEmpty ? nil : decodedUser
            password = (pass == nil || decodedPass.isEmpty) ? nil : decodedPass
            if username != nil && password == nil { throw invalid("a user name needs a password") }
        }

        // Query: only `db` is understood.
        var query: Substring?
        if let mark = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: mark)...]
            rest = rest[..<mark]
        }
        var queryDatabase: Int?
        if let query, !query.isEmpty {
            for pair in query.split(separator: "&") {
                let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                guard parts.count == 2, parts[0] == "db" else { throw invalid("unknown query parameter '\(pair)'") }
                guard let db = Int(parts[1]), db >= 0 else { throw invalid("database '\(parts[1])' is not a non-negative integer") }
                queryDatabase = db
            }
        }

        switch scheme {
        case "redis":
            var hostPort = rest
            var pathPart: Substring = ""
            if let slash = rest.firstIndex(of: "/") {
                hostPort = rest[..<slash]
                pathPart = rest[rest.index(after: slash)...]
            }
            let host: Substring
            var portText: Substring?
            if hostPort.hasPrefix("[") {
                guard let close = hostPort.firstIndex(of: "]") else { throw invalid("unterminated IPv6 address") }
                host = hostPort[hostPort.index(after: hostPort.startIndex)..<close]
                let after = hostPort[hostPort.index(after: close)...]
                if !after.isEmpty {
                    guard after.hasPrefix(":") else { throw invalid("unexpected '\(after)' after the IPv6 address") }
                    portText = after.dropFirst()
                }
            } else if let colon = hostPort.lastIndex(of: ":") {
                host = hostPort[..<colon]
                portText = hostPort[hostPort.index(after: colon)...]
                if host.contains(":") { throw invalid("IPv6 addresses must be written in brackets, e.g. [::1]") }
            } else {
                host = hostPort
            }
            guard !host.isEmpty else { throw invalid("missing host") }
            guard host.allSatisfy({ !$0.isWhitespace && $0 != "/" && $0 != "@" }) else { throw invalid("bad host '\(host)'") }
            var port = 6379
            if let portText {
                guard let value = Int(portText) else { throw invalid("port '\(portText)' is not a number") }
                guard (1...65535).contains(value) else { throw invalid("port \(value) is out of range 1-65535") }
                port = value
            }
            endpoint = .tcp(host: String(host), port: port)
            if !pathPart.isEmpty {
                guard let db = Int(pathPart), db >= 0 else { throw invalid("database '\(pathPart)' is not a non-negative integer") }
                database = db
            }
            if let queryDatabase { database = queryDatabase }
        case "unix":
            guard rest.hasPrefix("/"), rest.count > 1 else { throw invalid("expected an absolute socket path, as in unix:///tmp/redis.sock") }
            guard let path = Self.percentDecode(rest) else { throw invalid("bad percent-encoding in the path") }
            endpoint = .unixSocket(path: path)
            if let queryDatabase { database = queryDatabase }
        case "rediss":
            throw invalid("TLS (rediss://) is not supported: hiredis 0.14 has no TLS; use a local TLS proxy")
        default:
            throw invalid("unknown scheme '\(scheme)'; expected redis or unix")
        }
        try validate()
    }

    /// The configuration from the `REDIS_URL` environment variable, or from ``defaultURL`` when it is unset or empty.
    ///
    /// - Throws: ``RedisError/Code/invalidConfiguration`` when `REDIS_URL` is set but malformed.
    public static func fromEnvironment() throws(RedisError) -> RedisConfiguration {
        try fromEnvironment(value: getenv("REDIS_URL").map { String(cString: $0) })
    }

    static func fromEnvironment(value: String?) throws(RedisError) -> RedisConfiguration {
        guard let value, !value.isEmpty else { return try RedisConfiguration(url: defaultURL) }
        do {
            return try RedisConfiguration(url: value)
        } catch {
            throw RedisError(error.code, "REDIS_URL: " + error.message)
        }
    }

    /// Checks the values a caller may have set by hand.
    func validate() throws(RedisError) {
        switch endpoint {
        case .tcp(let host, let port):
            guard !host.isEmpty else { throw RedisError(.invalidConfiguration, "missing host") }
            guard (1...65535).contains(port) else { throw RedisError(.invalidConfiguration, "port \(port) is out of range 1-65535") }
        case .unixSocket(let path):
            guard !path.isEmpty else { throw RedisError(.invalidConfiguration, "empty Unix socket path") }
        }
        guard database >= 0 else { throw RedisError(.invalidConfiguration, "database \(database) is negative") }
        guard connectTimeout > .zero else { throw RedisError(.invalidConfiguration, "connect timeout must be positive") }
        guard commandTimeout > .zero else { throw RedisError(.invalidConfiguration, "command timeout must be positive") }
        guard reconnect.initialDelay >= .zero, reconnect.maximumDelay >= reconnect.initialDelay else {
            throw RedisError(.invalidConfiguration, "reconnect delays must satisfy 0 <= initialDelay <= maximumDelay")
        }
        guard (reconnect.maximumAttempts ?? 0) >= 0 else { throw RedisError(.invalidConfiguration, "maximumAttempts must not be negative") }
        if let healthCheckInterval, healthCheckInterval <= .zero {
            throw RedisError(.invalidConfiguration, "health check interval must be positive (or nil to turn it off)")
        }
        guard healthCheckTimeout > .zero else { throw RedisError(.invalidConfiguration, "health check timeout must be positive") }
        if username != nil && password == nil { throw RedisError(.invalidConfiguration, "a user name needs a password") }
        if let clientName, clientName.isEmpty || clientName.contains(where: { $0.isWhitespace || !$0.isASCII }) {
            throw RedisError(.invalidConfiguration, "client name '\(clientName)' must be non-empty ASCII without spaces")
        }
    }

    /// The configuration as a URL with the password masked, e.g. `redis://app:***@127.0.0.1:6379/2`.
    public var description: String {
        var credentials = ""
        if password != nil { credentials = (username ?? "") + ":***@" }
        switch endpoint {
        case .tcp(let host, let port):
            let shownHost = host.contains(":") ? "[\(host)]" : host
            return "redis://\(credentials)\(shownHost):\(port)" + (database == 0 ? "" : "/\(database)")
        case .unixSocket(let path):
            return "unix://\(credentials)\(path)" + (database == 0 ? "" : "?db=\(database)")
        }
    }

    /// Masks whatever stands between the scheme's `://` and the last `@`'s password part.
    static func redact(_ url: String) -> String {
        guard let schemeEnd = Self.schemeSeparator(in: url), let at = url.lastIndex(of: "@"), at > schemeEnd.upperBound else {
            return url
        }
        let userInfo = url[schemeEnd.upperBound..<at]
        let user = userInfo.firstIndex(of: ":").map { userInfo[..<$0] } ?? ""
        return String(url[..<schemeEnd.upperBound]) + user + ":***" + String(url[at...])
    }

    /// The range of the first `://` in `url`.
    private static func schemeSeparator(in url: String) -> Range<String.Index>? {
        var index = url.startIndex
        while index < url.endIndex {
            if url[index...].hasPrefix("://") { return index..<url.index(index, offsetBy: 3) }
            index = url.index(after: index)
        }
        return nil
    }

    private static func percentDecode(_ text: Substring) -> String? {
        guard text.contains("%") else { return String(text) }
        var bytes: [UInt8] = []
        var iterator = text.utf8.makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%") {
                guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else { return nil }
                bytes.append(high << 4 | low)
            } else {
                bytes.append(byte)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
