import Foundation
import RedisPubSub
import Testing

@Suite("Timeouts, cancellation and lost connections")
struct FailureTests {
    @Test func aCommandOnASilentServerFailsAtItsTimeoutAndTheConnectionIsReplaced() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.commandTimeout = .milliseconds(300)
        let connection = try await RedisConnection.connect(to: configuration)
        let events = EventRecorder(connection.events())
        server.pause()
        let time = await elapsed {
            await #expect { try await connection.send("ECHO", "first") } throws: { error in
                isRedisError(error, .connectionClosed) && "\(error)".contains("nothing else from the server")
            }
        }
        // Not kept waiting (a loaded sanitizer run took over 5 s to get there; without the rule it never ends).
        #expect(time >= .milliseconds(250) && time < .seconds(20))
        // Nothing was read since the command was written: the connection is declared dead, not kept waiting.
        let cause = try await events.disconnected()
        #expect(cause.code == .timeout && cause.message.contains("replaced"), "\(cause)")
        server.resume()
        try await events.reconnected()
        // The new connection's replies are its own: the old one's late "first" never reaches anyone.
        #expect(try await connection.send("ECHO", "second").string == "second")
        #expect(try await connection.send("ECHO", "third").string == "third")
        await connection.close()
    }

    @Test func aTimedOutCommandOnAConnectionThatStillReadsKeepsItAndItsLateReplyIsDropped() async throws {
        let server = try FakeServer { client in
            guard client.acceptHandshake(), client.readCommand() == ["GET", "slow"] else { return }
            client.write("$10\r\nslow-")  // part of the reply: the server is alive, the reply slow
            Thread.sleep(forTimeInterval: 0.6)
            client.write("reply\r\n")
            guard let next = client.readCommand() else { return }
            client.write("$\(next[1].utf8.count)\r\n\(next[1])\r\n")
            client.waitForClose()
        }
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.commandTimeout = .milliseconds(300)
        configuration.healthCheckInterval = nil
        let connection = try await RedisConnection.connect(to: configuration)
        let events = EventRecorder(connection.events())
        await #expect { try await connection.send("GET", "slow") } throws: { isRedisError($0, .timeout) }
        // Written after the timeout, answered after the slow reply's end: which is discarded, not taken for this one.
        #expect(try await connection.send("ECHO", "mine").string == "mine")
        #expect(!events.all.contains { if case .disconnected = $0 { true } else { false } })
        await connection.close()
    }

    @Test func cancellationMidCallReturnsPromptlyAndTheLateReplyIsDropped() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.commandTimeout = .seconds(30)  // only cancellation can end the call, and the connection stays
        configuration.healthCheckInterval = nil
        let connection = try await RedisConnection.connect(to: configuration)
        server.pause()
        let call = Task { try await connection.send("ECHO", "cancelled") }
        try await Task.sleep(for: .milliseconds(100))
        let time = await elapsed {
            call.cancel()
            await #expect(throws: RedisError(.cancelled, "the task was cancelled")) { try await call.value }
        }
        #expect(time < .seconds(10))  // the server stays frozen: cancellation ended it, not the 30 s timeout
        server.resume()
        #expect(try await connection.send("ECHO", "after").string == "after")
        await connection.close()
    }

    @Test func hugeTimeoutsDoNotOverflowThePollTimeout() async throws {
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
        await #expect(throws: RedisError(.cancelled, "the task was cancelled")) { try await task.value }
        #expect(try await connection.send("GET", key) == .null)
        await connection.close()
    }

    @Test func serverClosingTheConnectionMidCallFailsInFlightCommands() async throws {
        let connection = try await SharedServer.connect()
        let admin = try await SharedServer.connect()
        let id = try #require(try await connection.send("CLIENT", "ID").int)
        // CLIENT PAUSE WRITE holds the connection's SET in the server, while the admin's commands still run. Long
        // enough for a sanitizer build under load (a 5 s pause ran out before the KILL once, and the SET was done);
        // CLIENT UNPAUSE ends it as soon as the test is done with it.
        try await admin.send("CLIENT", "PAUSE", 20000, "WRITE")
        let held = Task { try await connection.send("SET", uniqueName(), "held") }
        do {
            try await waitUntil { (try await admin.send("CLIENT", "LIST", "ID", id).string ?? "").contains("flags=b") }
        } catch {
            try await admin.send("CLIENT", "UNPAUSE")  // the server is shared: never left paused
            throw error
        }
        try await admin.send("CLIENT", "KILL", "ID", id)
        try await admin.send("CLIENT", "UNPAUSE")
        let time = await elapsed {
            await #expect { try await held.value } throws: { isRedisError($0, .connectionClosed) }
        }
        #expect(time < .seconds(10))
        // The connection comes back by itself.
        try await waitUntil { (try? await connection.ping()) == "PONG" }
        await connection.close()
        await admin.close()
    }

    @Test func aKilledDedicatedConnectionFailsItsBlockingCallPromptly() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let connection = try await RedisConnection.connect(to: .init(url: server.url))
        let admin = try await RedisConnection.connect(to: .init(url: server.url))
        let key = uniqueName()
        let blocked = Task { try await connection.sendBlocking("BLPOP", key, 30) }
        var line: Substring?
        try await waitUntil {
            line = (try await admin.send("CLIENT", "LIST").string ?? "").split(separator: "\n").first { $0.contains("cmd=blpop") }
            return line != nil
        }
        let id = try #require(line?.split(separator: " ").first { $0.hasPrefix("id=") }?.dropFirst(3))
        try await admin.send("CLIENT", "KILL", "ID", String(id))
        let time = await elapsed {
            await #expect { try await blocked.value } throws: { isRedisError($0, .connectionClosed) }
        }
        #expect(time < .seconds(10))  // not the BLPOP's 30 s
        #expect(try await connection.ping() == "PONG")  // the shared connection never waited on it
        await connection.close()
        await admin.close()
    }

    @Test func withoutReconnectingLaterCallsFailAtOnce() async throws {
        let connection = try await SharedServer.connect { $0.reconnect = .disabled }
        let admin = try await SharedServer.connect()
        let id = try #require(try await connection.send("CLIENT", "ID").int)
        let events = EventRecorder(connection.events())
        try await admin.send("CLIENT", "KILL", "ID", id)
        #expect({ if case .connected = events.all.first { true } else { false } }())  // where things stood
        let first = try #require(await events.next { if case .connected = $0 { false } else { true } })
        #expect({ if case .disconnected = first { true } else { false } }(), "\(first)")
        let second = try #require(await events.next())
        guard case .closed(let error?) = second else {
            Issue.record("expected closed with an error, got \(second)")
            return
        }
        #expect(error.code == .connectionClosed)
        await #expect { try await connection.ping() } throws: { isRedisError($0, .connectionClosed) }
        await admin.close()
    }

    @Test func serverKilledFailsEverythingPromptly() async throws {
        let server = try RedisServer.start()
        let connection = try await RedisConnection.connect(to: .init(url: server.url))
        let blocking = (0..<5).map { index in Task { try await connection.sendBlocking("BLPOP", "k\(index)", 30) } }
        try await waitUntil {
            (try await connection.send("CLIENT", "LIST").string ?? "").components(separatedBy: "cmd=blpop").count == 6
        }
        server.pause()
        let calls = (0..<20).map { index in Task { try await connection.send("ECHO", "\(index)") } }
        try await Task.sleep(for: .milliseconds(100))
        server.stop()
        let time = await elapsed {
            for call in calls {
                await #expect { try await call.value } throws: { isRedisError($0, .connectionClosed) }
            }
            for call in blocking {
                await #expect { try await call.value } throws: { isRedisError($0, .connectionClosed) }
            }
        }
        #expect(time < .seconds(10))  // not the BLPOP's 30 s nor a command timeout
    }

    @Test func closeLetsInFlightCommandsFinishAndRefusesNewOnes() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        // The server is paused on purpose; under a loaded sanitizer run the pause can outlast the
        // health check's interval plus timeout, which would (rightly) replace the connection.
        configuration.healthCheckInterval = nil
        let connection = try await RedisConnection.connect(to: configuration)
        server.pause()
        let inFlight = Task { try await connection.send("ECHO", "answered") }
        try await Task.sleep(for: .milliseconds(100))
        let closing = Task { await connection.close() }
        try await Task.sleep(for: .milliseconds(200))
        server.resume()
        await closing.value
        #expect(try await inFlight.value.string == "answered")
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
