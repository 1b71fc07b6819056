import Foundation
import RedisPubSub
#if canImport(Glibc)
import Glibc
#endif

/// A redis-server process this test run started, on a free loopback port, with its own temporary directory.
/// Stopped by `stop()` (tests call it in `defer`) or at deinit. Never touches a server it did not start.
final class RedisServer: @unchecked Sendable {
    // @unchecked Sendable because: every property is immutable after init; `Process` is only signalled.
    let port: Int
    let directory: URL
    let process: Process
    /// Set once the process is reaped: its pid may belong to another process after that, so it is never signalled.
    private let ended = NSLock()
    private var hasEnded = false

    var url: String { "redis://127.0.0.1:\(port)" }
    var socketPath: String { directory.appendingPathComponent("redis.sock").path }

    /// Starts a server with `redis-server` defaults plus `arguments` (e.g. `["--requirepass", "pw"]`).
    static func start(_ arguments: [String] = [], port: Int? = nil) throws -> RedisServer {
        var lastError: (any Error)?
        for _ in 0..<5 {  // a free port can be taken between probing and binding: retry with another
            do { return try RedisServer(arguments: arguments, requestedPort: port) } catch { lastError = error }
        }
        throw lastError!
    }

    private init(arguments: [String], requestedPort: Int?) throws {
        port = try requestedPort ?? Self.freePort()
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("redis-pubsub-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        process = Process()
        process.executableURL = try Self.find("redis-server")
        process.arguments = [
            "--port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", directory.path, "--unixsocket", directory.appendingPathComponent("redis.sock").path,
            "--unixsocketperm", "700", "--logfile", directory.appendingPathComponent("redis.log").path,
        ] + arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if let _ = process.endedStatus() {
                hasEnded = true  // it failed to start (its port taken, say)
                break
            }
            if Self.canConnect(port: port) { return }
            usleep(10_000)
        }
        stop()
        throw RedisError(.connectionRefused, "redis-server on port \(port) did not start")
    }

    deinit { stop() }

    /// Kills the server and removes its directory. SIGKILL alone ends a paused server too, and without a SIGCONT first
    /// a paused one answers nothing more on its way out.
    func stop() {
        ended.lock()
        if !hasEnded {
            kill(process.processIdentifier, SIGKILL)
            process.waitForExit()  // not `waitUntilExit()`: see `Process.endedStatus()`
            hasEnded = true
        }
        ended.unlock()
        try? FileManager.default.removeItem(at: directory)
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered. Returns once the process is stopped
    /// (the signal is delivered asynchronously: a server running on another core would otherwise still answer what
    /// arrives in the next moment).
    func pause() {
        kill(process.processIdentifier, SIGSTOP)
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline {
            // /proc/<pid>/stat: "pid (name) state ...", state T when stopped.
            if let stat = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/stat", encoding: .utf8),
               let close = stat.lastIndex(of: ")"),
               stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).hasPrefix("T")
            {
                return
            }
            usleep(1_000)
        }
    }
    /// Thaws a paused server.
    func resume() { kill(process.processIdentifier, SIGCONT) }

    static func find(_ tool: String) throws -> URL {
        for directory in ["/usr/bin", "/usr/local/bin", "/opt/homebrew/bin", "/usr/sbin"] {
            let url = URL(fileURLWithPath: directory).appendingPathComponent(tool)
            if FileManager.default.isExecutableFile(atPath: url.path) { return url }
        }
        throw RedisError(.invalidConfiguration, "\(tool) is not installed (make test installs it)")
    }

    /// A loopback port nothing listens on right now.
    static func freePort() throws -> Int {
        let (fd, port) = try boundLoopbackSocket()
        close(fd)
        return port
    }

    static func canConnect(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        return connectLoopback(fd, port: port) == 0
    }

    /// A TCP socket bound to a free port on 127.0.0.1 (not listening), and the port.
    static func boundLoopbackSocket() throws -> (fd: Int32, port: Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = loopback(port: 0)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard bound == 0 else {
            close(fd)
            throw RedisError(.connectionRefused, "cannot bind a loopback socket")
        }
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return (fd, Int(UInt16(bigEndian: address.sin_port)))
    }

    /// Connects `fd` to 127.0.0.1:`port`; the result of connect(2).
    @discardableResult
    static func connectLoopback(_ fd: Int32, port: Int) -> Int32 {
        var address = loopback(port: port)
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
    }

    private static func loopback(port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        return address
    }
}

/// The server most tests share: `REDIS_URL` (what `make test` starts), or one started for this run when unset.
enum SharedServer {
    private static let started: RedisServer? = {
        if let url = ProcessInfo.processInfo.environment["REDIS_URL"], !url.isEmpty { return nil }
        let server = try? RedisServer.start()
        // Statics are never deinitialised: stop the server when the test process exits.
        atexit { SharedServer.started?.stop() }
        // Code that reads REDIS_URL itself (the README examples) finds this server too.
        if let server { setenv("REDIS_URL", server.url, 1) }
        return server
    }()

    static var configuration: RedisConfiguration {
        get throws {
            if let url = ProcessInfo.processInfo.environment["REDIS_URL"], !url.isEmpty {
                return try RedisConfiguration(url: url)
            }
            guard let started else { throw RedisError(.connectionRefused, "could not start redis-server") }
            return try RedisConfiguration(url: started.url)
        }
    }

    static func connect(_ adjust: (inout RedisConfiguration) -> Void = { _ in }) async throws -> RedisConnection {
        var configuration = try configuration
        adjust(&configuration)
        return try await RedisConnection.connect(to: configuration)
    }
}

/// A key or channel name no other test uses.
func uniqueName(_ prefix: String = "test") -> String { "\(prefix):\(UUID().uuidString)" }

/// Measures how long `body` takes.
func elapsed(_ body: () async throws -> Void) async rethrows -> Duration {
    let start = ContinuousClock.now
    try await body()
    return ContinuousClock.now - start
}

/// Whether `error` is a ``RedisError`` with `code`.
func isRedisError(_ error: any Error, _ code: RedisError.Code) -> Bool {
    (error as? RedisError)?.code == code
}

extension RedisServer {
    /// A server that also listens for TLS on `tlsPort`, with the test certificates; `clientCertificates` is
    /// redis-server's `--tls-auth-clients` (`no`, `yes`, `optional`). Readiness is checked on the plaintext port.
    /// A server with a TLS port (and its plaintext one) presenting `certificate` (by default the one for `localhost`
    /// and `127.0.0.1`); `clientCertificates` is `--tls-auth-clients` (`no`, `yes`, `optional`). Both ports may be
    /// given, to restart a server where it was.
    static func startTLS(
        clientCertificates: String = "no", certificate: String? = nil, tlsPort: Int? = nil, port: Int? = nil,
        _ arguments: [String] = []
    ) throws -> (server: RedisServer, tlsPort: Int) {
        let certificates = TestCertificates.shared
        let tlsPort = try tlsPort ?? freePort()
        let server = try start([
            "--tls-port", "\(tlsPort)", "--tls-cert-file", certificate ?? certificates.serverCertificate,
            "--tls-key-file", certificates.serverKey, "--tls-ca-cert-file", certificates.ca,
            "--tls-auth-clients", clientCertificates,
        ] + arguments, port: port)
        return (server, tlsPort)
    }
}
