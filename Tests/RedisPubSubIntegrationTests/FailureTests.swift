import Foundation
import RedisPubSub
import Testing

@Suite("Timeouts, cancellation and lost connections")
struct FailureTests {
    @Test func commandTimeoutAgainstAFrozenServerThenLateRepliesAreDiscarded() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.commandTimeout = .milliseconds(300)
        let connection = try await RedisConnection.connect(to: configuration)
        server.pause()
        let time = await elapsed {
            await #expect { try await connection.send("ECHO", "first") } throws: { isRedisError($0, .timeout) }
        }
        #expect(time >= .milliseconds(250) && time < .seconds(5))
        server.resume()
        // The server now answers "first": that late reply must not be taken for the next command's.
        #expect(try await connection.send("ECHO", "second").string == "second")
        #expect(try await connection.send("ECHO", "third").string == "third")
        await connection.close()
    }

    @Test func cancellationMidCallReturnsPromptlyAndTheLateReplyIsDropped() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let connection = try await RedisConnection.connect(to: .init(url: server.url))
        server.pause()
        let call = Task { try await connection.send("ECHO", "cancelled") }
        try await Task.sleep(for: .milliseconds(100))
        let time = await elapsed {
            call.cancel()
            await #expect(throws: CancellationError.self) { try await call.value }
        }
        #expect(time < .seconds(5))  // the server stays frozen: only cancellation can end the call
        server.resume()
        #expect(try await connection.send("ECHO", "after").string == "after")
        await connection.close()
    }

    @Test func hugeTimeoutsMeanNoTimeoutAndDoNotOverflow() async throws {
        // "No timeout" is commonly written as an enormous duration; the loop's poll timeout must not overflow on it.
        let connection = try await SharedServer.connect {
            $0.connectTimeout = .seconds(Int64.max / 4)
            $0.commandTimeout = .seconds(Int64.max / 4)
        }
        #expect(try await connection.ping() == "PONG")
        #expect(try await connection.send("ECHO", "still here").string == "still here")
        await connection.close()
    }

    @Test func alreadyCancelledTaskNeverSends() async throws {
        let connection = try await SharedServer.connect()
        let key = uniqueName()
        let task = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return try await connection.send("SET", key, "should not be written")
        }
        await #expect(throws: CancellationError.self) { try await task.value }
        #expect(try await connection.send("GET", key) == .null)
        await connection.close()
    }

    @Test func serverClosingTheConnectionMidCallFailsInFlightCommands() async throws {
        let connection = try await SharedServer.connect()
        let admin = try await SharedServer.connect()
        guard let id = try await connection.send("CLIENT", "ID").int else { Issue.record("no id"); return }
        let blocked = Task { try await connection.send("BLPOP", uniqueName(), 30) }
        try await waitUntil { (try await admin.send("CLIENT", "LIST", "ID", id).string ?? "").contains("cmd=blpop") }
        try await admin.send("CLIENT", "KILL", "ID", id)
        let time = await elapsed {
            await #expect { try await blocked.value } throws: { isRedisError($0, .connectionClosed) }
        }
        #expect(time < .seconds(2))
        // The connection comes back by itself.
        try await waitUntil { (try? await connection.ping()) == "PONG" }
        await connection.close()
        await admin.close()
    }

    @Test func withoutReconnectingLaterCallsFailAtOnce() async throws {
        let connection = try await SharedServer.connect { $0.reconnect = .disabled }
        let admin = try await SharedServer.connect()
        guard let id = try await connection.send("CLIENT", "ID").int else { Issue.record("no id"); return }
        let events = EventRecorder(connection.events)
        try await admin.send("CLIENT", "KILL", "ID", id)
        guard case .disconnected? = await events.next() else { Issue.record("no disconnect event"); return }
        guard case .closed(let error?)? = await events.next() else { Issue.record("not closed"); return }
        #expect(error.code == .connectionClosed)
        await #expect { try await connection.ping() } throws: { isRedisError($0, .connectionClosed) }
        await admin.close()
    }

    @Test func serverKilledFailsEverythingPromptly() async throws {
        let server = try RedisServer.start()
        let connection = try await RedisConnection.connect(to: .init(url: server.url))
        let calls = (0..<20).map { index in Task { try await connection.send("BLPOP", "k\(index)", 30) } }
        try await Task.sleep(for: .milliseconds(100))
        server.stop()
        for call in calls {
            await #expect { try await call.value } throws: { isRedisError($0, .connectionClosed) }
        }
    }

    @Test func closeLetsInFlightCommandsFinishAndRefusesNewOnes() async throws {
        let connection = try await SharedServer.connect()
        let key = uniqueName()
        let inFlight = Task { try await connection.send("BLPOP", key, 1) }  // answered with null after 1 s
        try await Task.sleep(for: .milliseconds(100))
        await connection.close()
        #expect(try await inFlight.value == .null)
        await #expect { try await connection.send("PING") } throws: { isRedisError($0, .connectionClosed) }
        await connection.close()  // twice is fine
    }

    @Test func droppingAConnectionClosesIt() async throws {
        let admin = try await SharedServer.connect()
        let name = "dropped-\(UUID().uuidString.prefix(8))"
        do {
            _ = try await SharedServer.connect { $0.clientName = name }
        }
        try await waitUntil { !((try await admin.send("CLIENT", "LIST").string ?? "").contains(name)) }
        await admin.close()
    }
}
