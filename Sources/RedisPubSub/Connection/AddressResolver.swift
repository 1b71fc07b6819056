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
    /// Whether `host` is already a numeric IPv4 or IPv6 address (with a scope, `fe80::1%eth0`, too).
    static func isNumeric(_ host: String) -> Bool {
        var hints = addrinfo()
        hints.ai_flags = AI_NUMERICHOST
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &list) == 0 else { return false }
        freeaddrinfo(list)
        return true
    }

    /// Addresses tests give to made-up host names (say, one that black-holes connects and one that answers), keyed
    /// by the name; looked up before the system's resolver.
    static let overrides = Locked<[String: [ServerAddress]]>([:])

    /// Resolves `host` on a background queue and calls `completion` there.
    static func resolve(
        host: String,
        port: Int,
        completion: @escaping @Sendable (Result<[ServerAddress], RedisError>) -> Void
    ) {
        if let fixed = overrides.withLock({ $0[host] }) {
            DispatchQueue.global().async { completion(.success(fixed)) }
            return
        }
        DispatchQueue.global().async {
            completion(resolveBlocking(host: host, port: port))
        }
    }

    static func resolveBlocking(host: String, port: Int) -> Result<[ServerAddress], RedisError> {
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
        var addresses: [ServerAddress] = []
        var cursor: UnsafeMutablePointer<addrinfo>? = first
        while let info = cursor {
            cursor = info.pointee.ai_next
            guard info.pointee.ai_family == AF_INET || info.pointee.ai_family == AF_INET6,
                  let ip = numericHost(info.pointee.ai_addr, length: info.pointee.ai_addrlen)
            else { continue }
            let address = ServerAddress.tcp(ip: ip, port: port)
            if !addresses.contains(address) { addresses.append(address) }
        }
        guard !addresses.isEmpty else {
            return .failure(RedisError(.nameResolutionFailed, "cannot resolve host '\(host)': no IPv4 or IPv6 address"))
        }
        return .success(addresses)
    }

    /// The numeric form of a socket address, with the scope of a link-local IPv6 address (`fe80::1%eth0`), which
    /// `inet_ntop` would drop.
    static func numericHost(_ address: UnsafeMutablePointer<sockaddr>?, length: socklen_t) -> String? {
        guard let address else { return nil }
        var buffer = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        let rc = getnameinfo(address, length, &buffer, socklen_t(buffer.count), nil, 0, NI_NUMERICHOST)
        guard rc == 0 else { return nil }
        let text = buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        return text.isEmpty ? nil : text
    }
}
