/// A resolved address to connect to: no name lookup is left for hiredis (which would block the loop doing it).
enum ServerAddress: Hashable, Sendable, CustomStringConvertible {
    /// A numeric IPv4 or IPv6 address (with its scope, `fe80::1%eth0`, for link-local IPv6) and a port.
    case tcp(ip: String, port: Int)
    /// A Unix domain socket's path.
    case unix(path: String)

    /// `127.0.0.1:6379`, `[::1]:6379`, or the socket path.
    var description: String {
        switch self {
        case .tcp(let ip, let port): ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
        case .unix(let path): path
        }
    }
}
