#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Dispatch

/// Name resolution off the event loop: hiredis would call a blocking `getaddrinfo` on the loop thread
/// (0.14 net.c:328), so host names are resolved here first and hiredis only ever sees numeric addresses.
enum AddressResolver {
    /// Whether `host` is already a numeric IPv4 or IPv6 address.
    static func isNumeric(_ host: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1
    }

    /// Resolves `host` on a background queue and calls `completion` there.
    static func resolve(
        host: String,
        port: Int,
        completion: @escaping @Sendable (Result<[HiredisContext.Address], RedisError>) -> Void
    ) {
        DispatchQueue.global().async {
            completion(resolveBlocking(host: host, port: port))
        }
    }

    static func resolveBlocking(host: String, port: Int) -> Result<[HiredisContext.Address], RedisError> {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        #if canImport(Darwin)
        hints.ai_socktype = SOCK_STREAM
        #else
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        #endif
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, nil, &hints, &list)
        guard rc == 0, let first = list else {
            let reason = rc == 0 ? "no address" : String(cString: gai_strerror(rc))
            return .failure(RedisError(.nameResolutionFailed, "cannot resolve host '\(host)': \(reason)"))
        }
        defer { freeaddrinfo(list) }
        var addresses: [HiredisContext.Address] = []
        var cursor: UnsafeMutablePointer<addrinfo>? = first
        while let info = cursor {
            var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
            if let sockaddr = info.pointee.ai_addr {
                switch info.pointee.ai_family {
                case AF_INET:
                    sockaddr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { pointer in
                        var address = pointer.pointee.sin_addr
                        _ = inet_ntop(AF_INET, &address, &buffer, socklen_t(buffer.count))
                    }
                case AF_INET6:
                    sockaddr.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { pointer in
                        var address = pointer.pointee.sin6_addr
                        _ = inet_ntop(AF_INET6, &address, &buffer, socklen_t(buffer.count))
                    }
                default:
                    break
                }
            }
            let ip = buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
            if !ip.isEmpty, !addresses.contains(where: { "\($0)" == "\(HiredisContext.Address.tcp(ip: ip, port: port))" }) {
                addresses.append(.tcp(ip: ip, port: port))
            }
            cursor = info.pointee.ai_next
        }
        guard !addresses.isEmpty else {
            return .failure(RedisError(.nameResolutionFailed, "cannot resolve host '\(host)': no IPv4 or IPv6 address"))
        }
        return .success(addresses)
    }
}
