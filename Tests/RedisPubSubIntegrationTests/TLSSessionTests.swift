import Foundation
@testable import RedisPubSub
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite("TLSSession: TLS over memory buffers, verified")
struct TLSSessionTests {
    let certificates = TestCertificates.shared

    private func server(clientCA: String? = nil) throws -> TLSSession {
        var settings = TLSSettings(certificateFile: certificates.serverCertificate, keyFile: certificates.serverKey)
        settings.caFile = clientCA
        settings.verifiesPeer = clientCA != nil  // mutual TLS: the server asks for a client certificate
        return try TLSSession(context: TLSContext(settings, server: true))
    }

    private func client(_ settings: TLSSettings, name: String? = "localhost") throws -> TLSSession {
        try TLSSession(context: TLSContext(settings), serverName: name)
    }

    /// Moves ciphertext both ways until both handshakes complete or one fails (rethrown, with which side).
    private func handshake(_ client: TLSSession, _ server: TLSSession) throws -> (client: RedisError?, server: RedisError?) {
        var wire: [UInt8] = []
        for _ in 0..<20 {
            var clientDone = false, serverDone = false
            do { clientDone = try client.handshake() } catch { return (error, nil) }
            wire.removeAll()
            client.takeOutput(into: &wire)
            wire.withUnsafeBytes { server.receive($0) }
            do { serverDone = try server.handshake() } catch { return (nil, error) }
            wire.removeAll()
            server.takeOutput(into: &wire)
            wire.withUnsafeBytes { client.receive($0) }
            if clientDone && serverDone { return (nil, nil) }
        }
        Issue.record("the handshake did not finish")
        return (nil, nil)
    }

    /// `bytes` from one session to the other, in chunks the way a socket would carry them.
    private func send(_ bytes: [UInt8], from sender: TLSSession, to receiver: TLSSession) throws -> [UInt8] {
        var received: [UInt8] = []
        var offset = 0
        while offset < bytes.count {
            offset += try bytes[offset...].withUnsafeBytes { try sender.write($0) }
            var wire: [UInt8] = []
            sender.takeOutput(into: &wire)
            for start in stride(from: 0, to: wire.count, by: 7_000) {
                wire[start..<min(start + 7_000, wire.count)].withUnsafeBytes { receiver.receive($0) }
                #expect(try receiver.read(into: &received) == .needsMore)
            }
        }
        return received
    }

    @Test func aVerifiedHandshakeCarriesAMegabyteBothWaysAndClosesCleanly() throws {
        let client = try client(TLSSettings(caFile: certificates.ca))
        let server = try server()
        let outcome = try handshake(client, server)
        #expect(outcome.client == nil && outcome.server == nil)
        #expect(client.isHandshakeComplete && server.isHandshakeComplete)
        let payload = (0..<1_048_576).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        #expect(try send(payload, from: client, to: server) == payload)
        #expect(try send(payload, from: server, to: client) == payload)
        client.shutdown()
        var wire: [UInt8] = []
        client.takeOutput(into: &wire)
        wire.withUnsafeBytes { server.receive($0) }
        var rest: [UInt8] = []
        #expect(try server.read(into: &rest) == .closed)
        #expect(rest.isEmpty)
    }

    @Test func anIPAddressIsVerifiedAgainstTheCertificatesIPEntries() throws {
        let client = try client(TLSSettings(caFile: certificates.ca), name: "127.0.0.1")
        let outcome = try handshake(client, try server())
        #expect(outcome.client == nil && outcome.server == nil)
    }

    @Test func anUnknownCAIsRefusedAndSaysSo() throws {
        let client = try client(TLSSettings(caFile: certificates.otherCA))
        let error = try #require(try handshake(client, try server()).client)
        #expect(error.code == .invalidConfiguration)
        #expect(error.message.contains("unable to get local issuer certificate"), "\(error)")
    }

    @Test func aNameTheCertificateDoesNotCoverIsRefusedAndSaysSo() throws {
        for name in ["redis.example.com", "127.0.0.2"] {
            let client = try client(TLSSettings(caFile: certificates.ca), name: name)
            let error = try #require(try handshake(client, try server()).client)
            #expect(error.code == .invalidConfiguration)
            #expect(error.message.contains("mismatch"), "\(error)")
        }
    }

    @Test func verificationTurnedOffAcceptsAnyCertificate() throws {
        var settings = TLSSettings(caFile: certificates.otherCA)
        settings.verifiesPeer = false
        let outcome = try handshake(try client(settings, name: "redis.example.com"), try server())
        #expect(outcome.client == nil && outcome.server == nil)
    }

    @Test func mutualTLSNeedsTheClientsCertificate() throws {
        let without = try handshake(try client(TLSSettings(caFile: certificates.ca)), try server(clientCA: certificates.ca))
        #expect(without.server != nil || without.client != nil)  // the server refuses the handshake
        let settings = TLSSettings(
            caFile: certificates.ca, certificateFile: certificates.clientCertificate, keyFile: certificates.clientKey)
        let with = try handshake(try client(settings), try server(clientCA: certificates.ca))
        #expect(with.client == nil && with.server == nil)
    }

    @Test func plaintextWhereTLSIsExpectedIsAProtocolError() throws {
        let client = try client(TLSSettings(caFile: certificates.ca))
        _ = try client.handshake()
        Array("-ERR unknown command\r\n".utf8).withUnsafeBytes { client.receive($0) }
        #expect(throws: RedisError.self) { _ = try client.handshake() }
    }

    @Test func badFilesAreConfigurationErrorsThatNameTheFile() {
        #expect { try TLSContext(TLSSettings(caFile: "/nonexistent/ca.pem")) } throws: { error in
            (error as? RedisError)?.code == .invalidConfiguration && "\(error)".contains("/nonexistent/ca.pem")
        }
        #expect { try TLSContext(TLSSettings(certificateFile: certificates.clientCertificate, keyFile: certificates.serverKey)) } throws: { error in
            "\(error)".contains(certificates.serverKey) && "\(error)".contains("mismatch")
        }
    }
}

/// The session against a real redis-server's TLS port, over a plain blocking socket (the loop's driver comes next).
@Suite("TLSSession against redis-server's TLS port")
struct TLSSessionServerTests {
    let certificates = TestCertificates.shared

    /// A blocking loopback connection through `session`: handshake, then `command` and its reply.
    private func roundTrip(_ session: TLSSession, port: Int, command: String) throws -> String {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        guard RedisServer.connectLoopback(fd, port: port) == 0 else { throw RedisError(.connectionRefused, "no TLS port") }
        var output: [UInt8] = []
        func flush() {
            output.removeAll(keepingCapacity: true)
            session.takeOutput(into: &output)
            var offset = 0
            while offset < output.count {
                let sent = output[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                guard sent > 0 else { return }
                offset += sent
            }
        }
        func receive() throws -> Bool {
            var chunk = [UInt8](repeating: 0, count: 16_384)
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard count > 0 else { return false }
            chunk[..<count].withUnsafeBytes { session.receive($0) }
            return true
        }
        while try !session.handshake() {
            flush()
            guard try receive() else { throw RedisError(.connectionClosed, "closed during the handshake") }
        }
        _ = try Array(command.utf8).withUnsafeBytes { try session.write($0) }
        flush()
        var reply: [UInt8] = []
        while !reply.contains(UInt8(ascii: "\n")) {
            guard try receive() else { break }
            if try session.read(into: &reply) == .closed { break }
        }
        return String(decoding: reply, as: UTF8.self)
    }

    @Test func aVerifiedSessionSpeaksRESPWithRedisServer() throws {
        let (server, tlsPort) = try RedisServer.startTLS()
        defer { server.stop() }
        let session = try TLSSession(context: TLSContext(TLSSettings(caFile: certificates.ca)), serverName: "127.0.0.1")
        #expect(try roundTrip(session, port: tlsPort, command: "PING\r\n") == "+PONG\r\n")
    }

    @Test func redisServerRequiringClientCertificatesRefusesASessionWithoutOne() throws {
        let (server, tlsPort) = try RedisServer.startTLS(clientCertificates: "yes")
        defer { server.stop() }
        let anonymous = try TLSSession(context: TLSContext(TLSSettings(caFile: certificates.ca)), serverName: "localhost")
        #expect(throws: RedisError.self) { _ = try roundTrip(anonymous, port: tlsPort, command: "PING\r\n") }
        let settings = TLSSettings(
            caFile: certificates.ca, certificateFile: certificates.clientCertificate, keyFile: certificates.clientKey)
        let mutual = try TLSSession(context: TLSContext(settings), serverName: "localhost")
        #expect(try roundTrip(mutual, port: tlsPort, command: "PING\r\n") == "+PONG\r\n")
    }
}

/// hiredis over the package's TLS: the context connects the socket, the session encrypts, hiredis parses.
@Suite("HiredisContext over TLS against redis-server")
struct HiredisContextTLSTests {
    let certificates = TestCertificates.shared

    /// Records what a context reports; the test waits on it from another thread.
    final class Recorder: HiredisContextDelegate, @unchecked Sendable {
        // @unchecked Sendable because: mutated only on the loop, read by the test through the lock.
        let state = Locked((connected: false, replies: [RedisValue](), closed: RedisError?.none))
        func hiredisContextDidStartTLSHandshake(_ context: HiredisContext) {}
        func hiredisContextDidConnect(_ context: HiredisContext) { state.withLock { $0.connected = true } }
        func hiredisContext(_ context: HiredisContext, didReceive reply: RedisValue) {
            state.withLock { $0.replies.append(reply) }
        }
        func hiredisContext(_ context: HiredisContext, didReceivePush push: RawPush) {}
        func hiredisContextDidFinishReading(_ context: HiredisContext) {}
        func hiredisContextDidWrite(_ context: HiredisContext) {}
        func hiredisContext(_ context: HiredisContext, didCloseWith error: RedisError) {
            state.withLock { $0.closed = error }
        }
        func wait(until condition: @escaping ((connected: Bool, replies: [RedisValue], closed: RedisError?)) -> Bool) async throws {
            let deadline = ContinuousClock.now + .seconds(20)
            while !state.withLock({ condition($0) }) {
                guard ContinuousClock.now < deadline else { throw RedisError(.timeout, "\(state.withLock { $0 })") }
                try await Task.sleep(for: .milliseconds(5))
            }
        }
    }

    /// A context the test drives on a loop of its own.
    final class Connection: @unchecked Sendable {
        // @unchecked Sendable because: `context` is touched only on `loop`.
        let loop = EventLoop(name: "hiredis-tls-test")
        let recorder = Recorder()
        var context: HiredisContext?

        init(port: Int, session: TLSSession) async throws {
            let recorder = self.recorder
            let box = UncheckedBox(session)
            let result: Result<Void, RedisError> = await withCheckedContinuation { continuation in
                loop.execute { [self] in
                    do throws(RedisError) {
                        context = try HiredisContext(
                            address: .tcp(ip: "127.0.0.1", port: port), loop: loop, delegate: recorder, tls: box.value)
                        continuation.resume(returning: .success(()))
                    } catch {
                        continuation.resume(returning: .failure(error))
                    }
                }
            }
            try result.get()
        }

        func send(_ command: [RedisArgument]) {
            let bytes = RESP.encode(command)
            loop.execute { [self] in
                bytes.withUnsafeBytes { context?.append($0) }
                context?.flush()
            }
        }

        func close() { loop.execute { [self] in context?.close() } }
    }

    /// Moves a value to the loop's thread, where it is used alone.
    struct UncheckedBox<Value>: @unchecked Sendable {
        // @unchecked Sendable because: the value is handed over once and used only on the receiving thread.
        let value: Value
        init(_ value: Value) { self.value = value }
    }

    @Test func commandsAndAMegabyteBothWaysGoThroughTheTLSSession() async throws {
        let (server, tlsPort) = try RedisServer.startTLS()
        defer { server.stop() }
        let session = try TLSSession(context: TLSContext(TLSSettings(caFile: certificates.ca)), serverName: "127.0.0.1")
        let connection = try await Connection(port: tlsPort, session: session)
        try await connection.recorder.wait { $0.connected }
        let payload = [UInt8]((0..<1_048_576).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        connection.send(["PING"])
        connection.send(["SET", "big", RedisArgument(payload)])
        connection.send(["GET", "big"])
        try await connection.recorder.wait { $0.replies.count == 3 || $0.closed != nil }
        let replies = connection.recorder.state.withLock { $0.replies }
        #expect(replies.count == 3)
        #expect(replies.first == .simpleString("PONG"))
        #expect(replies.last == .bulkString(payload))
        connection.close()
        try await connection.recorder.wait { $0.closed != nil }
    }

    @Test func anUnknownCAClosesTheContextWithTheVerificationError() async throws {
        let (server, tlsPort) = try RedisServer.startTLS()
        defer { server.stop() }
        let session = try TLSSession(context: TLSContext(TLSSettings(caFile: certificates.otherCA)), serverName: "localhost")
        let connection = try await Connection(port: tlsPort, session: session)
        try await connection.recorder.wait { $0.closed != nil }
        let error = try #require(connection.recorder.state.withLock { $0.closed })
        #expect(!connection.recorder.state.withLock { $0.connected })
        // redis-server sends its CA along, so OpenSSL names it a self-signed certificate in the chain.
        #expect(error.code == .invalidConfiguration && error.message.contains("verification failed"), "\(error)")
    }
}

extension TLSSession {
    /// Appends every byte that can be decrypted from what has arrived to `buffer`.
    func read(into buffer: inout [UInt8]) throws(RedisError) -> ReadResult {
        try withUnsafeTemporaryAllocation(byteCount: Self.recordSize, alignment: 1) { scratch throws(RedisError) -> ReadResult in
            while true {
                let outcome = try read(into: scratch)
                guard case .bytes(let count) = outcome else { return outcome }
                buffer.append(contentsOf: UnsafeRawBufferPointer(rebasing: scratch[..<count]))
            }
        }
    }
}
