#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Where and how to connect: endpoint, credentials, database, client name, timeouts and limits.
///
/// Most programs take it from a URL, by default the `REDIS_URL` environment variable:
///
/// ```swift
/// let configuration = try RedisConfiguration.fromEnvironment()   // REDIS_URL, else redis://127.0.0.1:6379
/// let other = try RedisConfiguration(url: "redis://app:s3cret@cache.internal:6380/2")
/// let managed = try RedisConfiguration(url: "rediss://default:s3cret@redis.example.com:6380")   // TLS
/// ```
///
/// The password never shows: not in ``description``, `debugDescription`, `dump()` or a `Mirror`, not in an error
/// about a malformed URL, not in a log line.
public struct RedisConfiguration: Hashable, Sendable, CustomStringConvertible, CustomDebugStringConvertible,
    CustomReflectable
{
    /// Where the server listens.
    public enum Endpoint: Hashable, Sendable {
        /// A host name or IP address and a TCP port. A link-local IPv6 address keeps its scope: `fe80::1%eth0`.
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
    /// The name set with `CLIENT SETNAME`, shown by `CLIENT LIST`; `nil` sends nothing. A server whose ACL does not
    /// let the user set it connects anyway (with a warning in the log).
    public var clientName: String?
    /// How long connecting may take: name resolution, the TCP or Unix connect and the handshake
    /// (`AUTH`, `SELECT`, `CLIENT SETNAME`, `PING`). A host name with several addresses gives each address an equal
    /// share of what is left, so one that never answers cannot use up the whole attempt. At start-up, a server that
    /// refuses or cannot be reached is tried again (with the ``reconnect`` backoff) until this time is up, so services
    /// may start before Redis. It is also the limit of each reconnect attempt. Default: 10 seconds.
    public var connectTimeout: Duration
    /// How long a command may wait for its reply before it fails with ``RedisError/Code/timeout``; the late reply is
    /// discarded and the connection stays. When the server sent nothing at all since the command was written, the
    /// server is taken to be frozen or cut off instead: the connection is declared dead and replaced, and the command
    /// fails with every other one in flight with ``RedisError/Code/connectionClosed`` (which ``PublishRetry`` sends
    /// again). Also the limit of a graceful `close()`. Default: 5 seconds.
    public var commandTimeout: Duration
    /// How a lost connection comes back. Default: ``ReconnectPolicy/default`` (forever, jittered, within ~0.5 s).
    public var reconnect: ReconnectPolicy
    /// Every connection (commands and subscriber): after this long without receiving anything, and with no command
    /// waiting for its reply (those have their own ``commandTimeout``), send a PING; `nil` turns the health check
    /// off. Default: 5 seconds.
    public var healthCheckInterval: Duration?
    /// How long the connection may stay silent after the health check's PING before it is declared dead, closed and
    /// replaced; at most ``commandTimeout``, which also bounds the PING. Any reply, an error reply included, proves it
    /// alive. Default: 2 seconds.
    public var healthCheckTimeout: Duration
    /// The most commands a connection holds unanswered (queued, buffered or in flight); past it a call fails at once
    /// with ``RedisError/Code/overloaded``. Default: 100,000.
    public var maximumPendingCommands: Int
    /// The most bytes of unanswered commands a connection holds; past it a call fails at once with
    /// ``RedisError/Code/overloaded``. One call larger than this is still sent when nothing else is outstanding.
    /// Default: 64 MiB.
    public var maximumPendingBytes: Int
    /// TLS, or `nil` for plaintext. A `rediss://` URL sets ``TLS/default``: the server's certificate is verified
    /// against the system's trust store and its name against the host. TCP endpoints only. Default: `nil`.
    public var tls: TLS?

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
        healthCheckTimeout: Duration = .seconds(2),
        maximumPendingCommands: Int = 100_000,
        maximumPendingBytes: Int = 64 * 1024 * 1024,
        tls: TLS? = nil
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
        self.maximumPendingCommands = maximumPendingCommands
        self.maximumPendingBytes = maximumPendingBytes
        self.tls = tls
    }

    /// Parses `redis://[[user]:password@]host[:port][/db]`, the same with `rediss://` for TLS, or
    /// `unix://[[user]:password@]/path/to/socket[?db=N]`.
    ///
    /// User and password may be percent-encoded (and must be, to contain `:` in the user name); an unencoded `@` in
    /// a password works too. IPv6 hosts go in brackets, a link-local one with its scope as `%25`:
    /// `redis://[::1]:6379`, `redis://[fe80::1%25eth0]`. The port defaults to 6379 and the database to 0; `db` is the
    /// only query parameter.
    ///
    /// - Throws: ``RedisError`` with ``RedisError/Code/invalidConfiguration`` saying what is wrong. The message shows
    ///   the URL with its credentials, query values and fragment masked, whatever its shape.
    public init(url: String) throws(RedisError) {
        self.init()
        let shown = Self.redact(url)
        func invalid(_ why: String) -> RedisError {
            RedisError(.invalidConfiguration, "invalid Redis URL '\(shown)': \(why)")
        }
        guard let parts = URLParts(url) else {
            throw invalid("expected redis://host[:port][/db] or unix:///path")
        }
        if let userInfo = parts.userInfo {
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
        if parts.fragment != nil { throw invalid("a '#' fragment has no meaning here") }

        // Query: only `db` is understood. Values are never repeated in errors: they may hold anything.
        var queryDatabase: Int?
        if let query = parts.query, !query.isEmpty {
            for pair in query.split(separator: "&") {
                let item = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                let name = item[0]
                guard name == "db", item.count == 2 else {
                    let shownName = name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" }) && name.count <= 32
                        ? "'\(name)'" : "(not shown)"
                    throw invalid("unknown query parameter \(shownName); only db=N is understood")
                }
                guard let db = Int(item[1]), db >= 0 else { throw invalid("the database in db= is not a non-negative integer") }
                queryDatabase = db
            }
        }

        switch parts.scheme {
        case "redis", "rediss":
            var hostPort = parts.location
            var pathPart: Substring = ""
            if let slash = hostPort.firstIndex(of: "/") {
                pathPart = hostPort[hostPort.index(after: slash)...]
                hostPort = hostPort[..<slash]
            }
            let host: String
            var portText: Substring?
            if hostPort.hasPrefix("[") {
                guard let close = hostPort.firstIndex(of: "]") else { throw invalid("unterminated IPv6 address") }
                // A scope is written `%25eth0` (RFC 6874); a bare `%eth0` is taken too.
                host = String(hostPort[hostPort.index(after: hostPort.startIndex)..<close]).replacing("%25", with: "%")
                let after = hostPort[hostPort.index(after: close)...]
                if !after.isEmpty {
                    guard after.hasPrefix(":") else { throw invalid("unexpected text after the IPv6 address") }
                    portText = after.dropFirst()
                }
                guard host.contains(":") else { throw invalid("brackets are for IPv6 addresses") }
            } else if let colon = hostPort.lastIndex(of: ":") {
                host = String(hostPort[..<colon])
                portText = hostPort[hostPort.index(after: colon)...]
                if host.contains(":") { throw invalid("IPv6 addresses must be written in brackets, e.g. [::1]") }
            } else {
                host = String(hostPort)
            }
            guard !host.isEmpty else { throw invalid("missing host") }
            guard host.allSatisfy({ !$0.isWhitespace && $0 != "/" && $0 != "@" && $0 != "[" && $0 != "]" }) else {
                throw invalid("the host contains a space, '/', '@' or a bracket")  // not repeated: it may be anything
            }
            var port = 6379
            if let portText {
                guard let value = Int(portText) else { throw invalid("the port is not a number") }
                guard (1...65535).contains(value) else { throw invalid("port \(value) is out of range 1-65535") }
                port = value
            }
            endpoint = .tcp(host: host, port: port)
            if !pathPart.isEmpty {
                guard let db = Int(pathPart), db >= 0 else { throw invalid("the database in the path is not a non-negative integer") }
                database = db
            }
            if let queryDatabase { database = queryDatabase }
            if parts.scheme == "rediss" { tls = .default }
        case "unix":
            let path = parts.location
            guard path.hasPrefix("/"), path.count > 1 else { throw invalid("expected an absolute socket path, as in unix:///tmp/redis.sock") }
            guard let decoded = Self.percentDecode(path) else { throw invalid("bad percent-encoding in the path") }
            endpoint = .unixSocket(path: decoded)
            if let queryDatabase { database = queryDatabase }
        default:
            let scheme = parts.scheme.count <= 16 ? "'\(parts.scheme)'" : "(not shown)"
            throw invalid("unknown scheme \(scheme); expected redis, rediss or unix")
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
            if tls != nil { throw RedisError(.invalidConfiguration, "TLS needs a TCP endpoint, not a Unix socket") }
        }
        try tls?.validate()
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
        guard maximumPendingCommands > 0 else { throw RedisError(.invalidConfiguration, "maximumPendingCommands must be positive") }
        guard maximumPendingBytes > 0 else { throw RedisError(.invalidConfiguration, "maximumPendingBytes must be positive") }
        if username != nil && password == nil { throw RedisError(.invalidConfiguration, "a user name needs a password") }
        if let clientName, clientName.isEmpty || clientName.contains(where: { $0.isWhitespace || !$0.isASCII }) {
            throw RedisError(.invalidConfiguration, "client name '\(clientName)' must be non-empty ASCII without spaces")
        }
    }

    /// The configuration as a URL with the password masked, e.g. `redis://app:***@127.0.0.1:6379/2`; `rediss://`
    /// with TLS, followed by its settings unless they are the defaults.
    public var description: String {
        var credentials = ""
        if password != nil { credentials = Self.percentEncodeUser(username ?? "") + ":***@" }
        switch endpoint {
        case .tcp(let host, let port):
            let shownHost = host.contains(":") ? "[\(host.replacing("%", with: "%25"))]" : host
            let url = (tls == nil ? "redis://" : "rediss://") + "\(credentials)\(shownHost):\(port)"
                + (database == 0 ? "" : "/\(database)")
            guard let tls, tls != .default else { return url }
            return url + " " + tls.description
        case .unixSocket(let path):
            return "unix://\(credentials)\(path)" + (database == 0 ? "" : "?db=\(database)")
        }
    }

    /// The same as ``description``: the password masked.
    public var debugDescription: String { description }

    /// The fields as `dump()` and debuggers show them, with the password masked.
    public var customMirror: Mirror {
        Mirror(
            self,
            children: [
                "endpoint": endpoint, "username": username as Any, "password": (password == nil ? nil : "***") as Any,
                "database": database, "clientName": clientName as Any, "connectTimeout": connectTimeout,
                "commandTimeout": commandTimeout, "reconnect": reconnect, "healthCheckInterval": healthCheckInterval as Any,
                "healthCheckTimeout": healthCheckTimeout, "maximumPendingCommands": maximumPendingCommands,
                "maximumPendingBytes": maximumPendingBytes, "tls": tls as Any,
            ],
            displayStyle: .struct)
    }

    // MARK: URL pieces

    /// A URL split where the parser and the redactor agree: `scheme://[userinfo@]location[?query][#fragment]`.
    /// Hand-written rather than `URLComponents` (which, tried on Linux, takes these shapes too): the redactor must
    /// mask exactly what the parser takes for credentials, also in input `URLComponents` rejects without a reason, so
    /// both use this one split; and each malformed part gets its own error message.
    /// User info ends at the last `@` (a password may contain `@` unencoded; a host cannot); for `unix:` a path may
    /// contain `@`, so there credentials are recognised only in `unix://[user]:password@/path`.
    struct URLParts {
        var scheme: String
        var userInfo: Substring?
        var location: Substring
        var query: Substring?
        var fragment: Substring?

        init?(_ url: String) {
            guard let separator = url.firstRange(of: "://") else { return nil }
            let scheme = url[..<separator.lowerBound]
            guard !scheme.isEmpty, scheme.allSatisfy(RedisConfiguration.isSchemeCharacter) else { return nil }
            self.scheme = scheme.lowercased()
            var rest = url[separator.upperBound...]
            if self.scheme == "unix" {
                // The last `@/`: a password may hold `@/` itself; a path after credentials rarely does (and taking
                // too much as credentials hides it rather than shows a password).
                if !rest.hasPrefix("/"), let at = rest.ranges(of: "@/").last {
                    userInfo = rest[..<at.lowerBound]
                    rest = rest[rest.index(after: at.lowerBound)...]
                }
            } else if let at = rest.lastIndex(of: "@") {
                userInfo = rest[..<at]
                rest = rest[rest.index(after: at)...]
            }
            if let hash = rest.firstIndex(of: "#") {
                fragment = rest[rest.index(after: hash)...]
                rest = rest[..<hash]
            }
            if let mark = rest.firstIndex(of: "?") {
                query = rest[rest.index(after: mark)...]
                rest = rest[..<mark]
            }
            location = rest
        }
    }

    /// `url` fit for an error message or a log line, whatever its shape: credentials (everything before the last
    /// `@` but a plain user name), query values, the fragment and a port or database that is not a number are
    /// masked. Input that is not `scheme://...` shows only its scheme.
    static func redact(_ url: String) -> String {
        func maskedUserInfo(_ userInfo: Substring) -> String {
            guard let colon = userInfo.firstIndex(of: ":") else { return "***@" }
            let user = userInfo[..<colon]
            let plain = user.allSatisfy { $0.isLetter || $0.isNumber || "-_.%".contains($0) }
            return (plain ? String(user) : "***") + ":***@"
        }
        func maskedTail(_ location: Substring, query: Substring?, fragment: Substring?, isUnix: Bool) -> String {
            var shown: String
            if isUnix {
                // A path is shown; anything else (it may be credentials written without their `@/`) is not.
                shown = location.hasPrefix("/") ? String(location) : (location.isEmpty ? "" : "***")
            } else {
                var authority = location
                var path: Substring?
                if let slash = location.firstIndex(of: "/") {
                    authority = location[..<slash]
                    path = location[location.index(after: slash)...]
                }
                // A port that is not a number, or more than one colon outside brackets, may be credentials typed
                // without their `@host`: `redis://user:secret:6379`.
                let portStart = authority.hasPrefix("[") ? authority.firstIndex(of: "]").flatMap { close in
                    authority[close...].firstIndex(of: ":")
                } : authority.lastIndex(of: ":")
                let hostCharacters = authority.allSatisfy {
                    $0.isASCII && ($0.isLetter || $0.isNumber || ".-_:[]%".contains($0))
                }
                if !hostCharacters || (!authority.hasPrefix("[") && authority.filter({ $0 == ":" }).count > 1) {
                    shown = "***"  // not a host and port: it may be anything
                } else if authority.hasPrefix("["), !authority.contains("]") {
                    shown = "***"  // an unclosed bracket: anything may follow it
                } else if let colon = portStart {
                    let port = authority[authority.index(after: colon)...]
                    shown = String(authority[...colon]) + (port.allSatisfy(\.isNumber) ? String(port) : "***")
                } else {
                    shown = String(authority)
                }
                if let path { shown += "/" + (path.allSatisfy(\.isNumber) ? String(path) : "***") }
            }
            if let query {
                shown += "?" + query.split(separator: "&", omittingEmptySubsequences: false).map { pair in
                    let name = pair.split(separator: "=", maxSplits: 1).first ?? ""
                    let plainName = name.allSatisfy { $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" }
                    return (plainName ? String(name) : "***") + (pair.contains("=") ? "=***" : "")
                }.joined(separator: "&")
            }
            if fragment != nil { shown += "#***" }
            return shown
        }
        if let parts = URLParts(url), let separator = url.firstRange(of: "://") {
            let prefix = String(url[..<separator.upperBound])
            let credentials = parts.userInfo.map(maskedUserInfo) ?? ""
            return prefix + credentials
                + maskedTail(parts.location, query: parts.query, fragment: parts.fragment, isUnix: parts.scheme == "unix")
        }
        // Not `scheme://...`: nothing tells which part is what, and a bare word may be a password pasted in the
        // wrong place. Only the scheme (when there is one) is shown.
        if let colon = url.firstIndex(of: ":"), !url[..<colon].isEmpty, url[..<colon].count <= 16,
           url[..<colon].allSatisfy(isSchemeCharacter)
        {
            return String(url[...colon]) + "..." + " (the rest is not shown)"
        }
        return url.isEmpty ? "" : "(not shown: not a URL)"
    }

    private static func isSchemeCharacter(_ character: Character) -> Bool {
        character.isASCII && (character.isLetter || character.isNumber || character == "+" || character == "-" || character == ".")
    }

    private static func percentEncodeUser(_ user: String) -> String {
        var out = ""
        for byte in user.utf8 {
            let character = Character(Unicode.Scalar(byte))
            if byte < 0x80, character.isLetter || character.isNumber || "-_.~".contains(character) {
                out.append(character)
            } else {
                out += "%" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2)
            }
        }
        return out
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

extension String {
    /// Zeros in front up to `width` characters (two-digit hex in escapes: `%0A`, `\x0A`).
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
