import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A scripted server on a free loopback port, for what a real redis-server never does: replies nested thousands deep,
/// malformed pushes, unsolicited replies. Each accepted connection runs `script` on a thread of its own.
final class FakeServer: @unchecked Sendable {
    // @unchecked Sendable because: `listener` and `port` are immutable; connections are owned by their threads.
    let port: Int
    private let listener: Int32

    var url: String { "redis://127.0.0.1:\(port)" }

    init(script: @escaping @Sendable (FakeConnection) -> Void) throws {
        (listener, port) = try Self.listen(backlog: 16)
        let listener = self.listener
        Thread.detachNewThread {
            while true {
                let fd = accept(listener, nil, nil)
                guard fd >= 0 else { return }  // the listener was closed
                Thread.detachNewThread {
                    let connection = FakeConnection(fd: fd)
                    script(connection)
                    connection.close()
                }
            }
        }
    }

    deinit { stop() }

    func stop() {
        shutdown(listener, Int32(SHUT_RDWR))
        posixClose(listener)
    }

    /// A listening socket on a free loopback port, and the port.
    static func listen(backlog: Int32) throws -> (Int32, Int) {
        let (fd, port) = try RedisServer.boundLoopbackSocket()
        guard posixListen(fd, backlog) == 0 else {
            posixClose(fd)
            throw POSIXError(.EADDRINUSE)
        }
        return (fd, port)
    }
}

/// One client of a ``FakeServer``: reads RESP commands, writes raw bytes.
final class FakeConnection: @unchecked Sendable {
    // @unchecked Sendable because: only the connection's own thread uses it.
    let fd: Int32
    private var buffer: [UInt8] = []

    init(fd: Int32) { self.fd = fd }

    /// The next command's arguments as text, or `nil` when the client closed.
    func readCommand() -> [String]? {
        guard let header = readLine(), header.hasPrefix("*"), let count = Int(header.dropFirst()) else { return nil }
        var arguments: [String] = []
        for _ in 0..<count {
            guard let size = readLine(), size.hasPrefix("$"), let length = Int(size.dropFirst()),
                  let bytes = read(exactly: length + 2) else { return nil }
            arguments.append(String(decoding: bytes.dropLast(2), as: UTF8.self))
        }
        return arguments
    }

    /// Answers the handshake of a configuration without password, database or client name: `PING`.
    func acceptHandshake() -> Bool {
        guard readCommand()?.first?.uppercased() == "PING" else { return false }
        write("+PONG\r\n")
        return true
    }

    func write(_ text: String) { write(Array(text.utf8)) }

    func write(_ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { posixWrite(fd, $0.baseAddress, $0.count) }
            guard written > 0 else { return }
            offset += written
        }
    }

    /// Waits until the client closes its end (or `seconds` pass).
    func waitForClose(seconds: Double = 10) {
        var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            guard poll(&descriptor, 1, 100) >= 0 else { return }
            if descriptor.revents != 0 {
                var scratch = [UInt8](repeating: 0, count: 4096)
                if posixRead(fd, &scratch, scratch.count) <= 0 { return }
            }
        }
    }

    func close() { posixClose(fd) }

    private func fill() -> Bool {
        var chunk = [UInt8](repeating: 0, count: 4096)
        let count = posixRead(fd, &chunk, chunk.count)
        guard count > 0 else { return false }
        buffer += chunk[..<count]
        return true
    }

    private func readLine() -> String? {
        while true {
            if let end = buffer.firstIndex(of: 10), end > 0, buffer[end - 1] == 13 {
                let line = String(decoding: buffer[..<(end - 1)], as: UTF8.self)
                buffer.removeFirst(end + 1)
                return line
            }
            guard fill() else { return nil }
        }
    }

    private func read(exactly count: Int) -> [UInt8]? {
        while buffer.count < count { guard fill() else { return nil } }
        let bytes = Array(buffer[..<count])
        buffer.removeFirst(count)
        return bytes
    }
}

/// A loopback port that refuses connects for as long as this object lives: bound, never listening, so no other test
/// can start a server on it in the meantime (a port merely probed free can be taken by a parallel test at once).
final class RefusingPort: @unchecked Sendable {
    // @unchecked Sendable because: every property is immutable.
    let port: Int
    private let socket: Int32

    init() throws {
        (socket, port) = try RedisServer.boundLoopbackSocket()
    }

    deinit { posixClose(socket) }
}

/// A loopback port whose connects never complete: its listen queue is full and nobody accepts, so the kernel drops
/// the SYNs, as a firewalled or vanished host would.
final class BlackHole: @unchecked Sendable {
    // @unchecked Sendable because: every property is immutable.
    let port: Int
    private let listener: Int32
    private let filler: Int32

    init() throws {
        (listener, port) = try FakeServer.listen(backlog: 0)
        filler = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        RedisServer.connectLoopback(filler, port: port)  // takes the one place in the listen queue
    }

    deinit {
        posixClose(filler)
        posixClose(listener)
    }
}

// The C calls, at file scope where the methods named like them do not hide them.
private func posixClose(_ fd: Int32) { _ = close(fd) }
private func posixWrite(_ fd: Int32, _ bytes: UnsafeRawPointer?, _ count: Int) -> Int { write(fd, bytes, count) }
private func posixRead(_ fd: Int32, _ bytes: UnsafeMutableRawPointer?, _ count: Int) -> Int { read(fd, bytes, count) }
private func posixListen(_ fd: Int32, _ backlog: Int32) -> Int32 { listen(fd, backlog) }
