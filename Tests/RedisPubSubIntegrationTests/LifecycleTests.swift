import Foundation
import Logging
@testable import RedisPubSub
import ServiceLifecycle
import Testing

/// Runs `body` on the connection's event loop and returns its result.
func onLoop<Result: Sendable>(_ core: ConnectionCore, _ body: @escaping @Sendable () -> Result) async -> Result {
    await withCheckedContinuation { continuation in
        core.loop.execute { continuation.resume(returning: body()) }
    }
}

/// The `calls` and `rejected_calls` of a command in `INFO commandstats`.
func commandStats(_ connection: RedisConnection, _ command: String) async throws -> (calls: Int, rejected: Int) {
    let info = try await connection.send("INFO", "commandstats").string ?? ""
    guard let line = info.split(whereSeparator: \.isNewline).first(where: { $0.hasPrefix("cmdstat_\(command):") }) else {
        return (0, 0)
    }
    func field(_ name: String) -> Int {
        line.split(separator: ":").last?.split(separator: ",").first { $0.hasPrefix("\(name)=") }
            .flatMap { Int($0.dropFirst(name.count + 1)) } ?? 0
    }
    return (field("calls"), field("rejected_calls"))
}

@Suite("Connection lifecycle: supervision, handshake, limits and shutdown against real servers")
struct LifecycleTests {
    // MARK: The handshake

    @Test func maxClientsWithAPasswordAtStartUpIsWaitedOutNotTakenForAWrongPassword() async throws {
        let server = try RedisServer.start(["--requirepass", "pw", "--maxclients", "1"])
        defer { server.stop() }
        let url = "redis://:pw@127.0.0.1:\(server.port)"
        var first: RedisConnection?
        for _ in 0..<50 where first == nil {  // the start-up probe may hold the one slot for a moment
            first = try? await RedisConnection.connect(to: .init(url: url))
            if first == nil { try await Task.sleep(for: .milliseconds(20)) }
        }
        let holder = try #require(first)
        var configuration = try RedisConfiguration(url: url)
        configuration.connectTimeout = .seconds(10)
        // The server answers the new socket with "-ERR max number of clients reached" where AUTH's reply was expected.
        let second = Task { try await RedisConnection.connect(to: configuration) }
        try await Task.sleep(for: .milliseconds(500))
        await holder.close()
        let connection = try await second.value
        #expect(try await connection.ping() == "PONG")
        await connection.close()
    }

    @Test func aSubscribeOnlyAclUserConnectsAndItsHealthCheckGoesOnThroughNoPerm() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let admin = try await RedisConnection.connect(to: .init(url: server.url))
        try await admin.send(
            "ACL", "SETUSER", "listener", "on", ">pw", "resetchannels", "&*", "-@all",
            "+subscribe", "+psubscribe", "+ssubscribe", "+unsubscribe", "+punsubscribe", "+sunsubscribe")
        var configuration = try RedisConfiguration(url: "redis://listener:pw@127.0.0.1:\(server.port)")
        configuration.clientName = "listener-1"  // CLIENT SETNAME is refused too: connected anyway
        configuration.healthCheckInterval = .milliseconds(100)
        let subscriber = try await Subscriber.connect(to: configuration)
        let events = EventRecorder(subscriber.events())
        let subscription = try await subscriber.subscribe(to: "news")
        #expect(try await admin.publish("first", to: "news") == 1)
        let before = try await commandStats(admin, "ping").rejected
        // Every health check got NOPERM, and each counted as proof of life: the checks went on (one every 100 ms;
        // waited for rather than counted in a fixed time, which a sanitizer build under load stretches).
        try await waitUntil(timeout: .seconds(20)) { try await commandStats(admin, "ping").rejected - before >= 4 }
        #expect(!events.all.contains { if case .disconnected = $0 { true } else { false } })
        #expect(try await admin.publish("second", to: "news") == 1)
        #expect(try await collect(subscription, 2).map(\.string) == ["first", "second"])
        await subscriber.close()
        await admin.close()
    }

    @Test func aServerInProtectedModeIsRefusedAtOnceNotTakenForConnected() async throws {
        let accepted = Locked(0)
        let server = try FakeServer { client in
            accepted.withLock { $0 += 1 }
            _ = client.readCommand()
            client.write("-DENIED Redis is running in protected mode because protected mode is enabled and no password is set for the default user.\r\n")
        }
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.connectTimeout = .seconds(30)
        let time = await elapsed {
            await #expect { _ = try await RedisConnection.connect(to: configuration) } throws: { error in
                isRedisError(error, .permissionDenied) && "\(error)".contains("protected mode")
            }
        }
        #expect(time < .seconds(15))  // not retried until the connect timeout
        #expect(accepted.withLock { $0 } == 1)
    }

    // MARK: Supervision of command connections

    @Test func aSlowCommandIsNotKilledByTheHealthCheck() async throws {
        let server = try RedisServer.start(["--enable-debug-command", "local"])
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.healthCheckInterval = .milliseconds(200)
        configuration.healthCheckTimeout = .milliseconds(200)
        configuration.commandTimeout = .seconds(10)
        let connection = try await RedisConnection.connect(to: configuration)
        let events = EventRecorder(connection.events())
        try await Task.sleep(for: .milliseconds(300))  // idle: a health check has run
        // The server is busy for 1.5 s, answering nothing: the command's own timeout judges, not the health check.
        #expect(try await connection.send("DEBUG", "SLEEP", "1.5") == .simpleString("OK"))
        #expect(!events.all.contains { if case .disconnected = $0 { true } else { false } })
        // And the check comes back soon after, not at the 10 s deadline the command had.
        let admin = try await RedisConnection.connect(to: .init(url: server.url))
        let before = try await commandStats(admin, "ping").calls
        try await Task.sleep(for: .milliseconds(1200))
        let pings = try await commandStats(admin, "ping").calls - before
        // Every 200 ms when idle; before, none for the rest of the slow command's 10 s deadline.
        #expect(pings >= 2, "\(pings) health-check PINGs in 1.2 s after the slow command")
        await admin.close()
        await connection.close()
    }

    @Test func aPongHeldBackByASlowCommandWrittenRightAfterThePingIsNotADeath() async throws {
        // Redis writes replies after running what it read: a slow command read together with a health PING holds the
        // PONG back. Played out exactly: the PING goes unanswered until a command follows (sent within the health
        // check's timeout of 12 s, a margin for a sanitizer build under load: 6 s once ran out), which takes 16 s.
        let pinged = Locked(false)
        let server = try FakeServer { client in
            guard client.acceptHandshake(), client.readCommand() == ["PING"] else { return }
            pinged.withLock { $0 = true }
            guard client.readCommand() == ["EVAL", "slow", "0"] else { return }
            Thread.sleep(forTimeInterval: 16)
            client.write("+PONG\r\n+done\r\n")
            while client.readCommand() != nil { client.write("+PONG\r\n") }
        }
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.healthCheckInterval = .milliseconds(200)
        configuration.healthCheckTimeout = .seconds(12)
        configuration.commandTimeout = .seconds(30)
        configuration.reconnect = .disabled
        let connection = try await RedisConnection.connect(to: configuration)
        let events = EventRecorder(connection.events())
        try await waitUntil { pinged.withLock { $0 } }
        #expect(try await connection.send("EVAL", "slow", "0") == .simpleString("done"))
        #expect(!events.all.contains { if case .disconnected = $0 { true } else { false } })
        await connection.close()
    }

    @Test func aConnectionIsDeclaredDeadWhenItsNewestOverdueCommandHeardNothing() async throws {
        let server = try FakeServer { client in
            guard client.acceptHandshake(), client.readCommand() != nil else { return }
            client.write("$100\r\npart of a reply")  // then silence, mid-reply
            client.waitForClose()
        }
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.commandTimeout = .milliseconds(300)
        configuration.healthCheckInterval = nil
        configuration.reconnect = .disabled
        let connection = try await RedisConnection.connect(to: configuration)
        let events = EventRecorder(connection.events())
        // The first command heard part of its reply: only it times out.
        await #expect { try await connection.send("GET", "big") } throws: { isRedisError($0, .timeout) }
        // The next one hears nothing at all: the connection is dead, though the oldest slot did hear something.
        await #expect { try await connection.send("PING") } throws: { isRedisError($0, .connectionClosed) }
        let cause = try await events.disconnected()
        #expect(cause.message.contains("nothing else from the server"), "\(cause)")
    }

    @Test func aCommandBehindAHealthPingKeepsItsOwnShorterTimeout() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.commandTimeout = .milliseconds(300)
        configuration.healthCheckInterval = .milliseconds(100)
        configuration.healthCheckTimeout = .seconds(10)  // longer than the command timeout
        let connection = try await RedisConnection.connect(to: configuration)
        let admin = try await RedisConnection.connect(to: .init(url: server.url))
        let before = try await commandStats(admin, "ping").calls
        try await waitUntil { try await commandStats(admin, "ping").calls > before }  // the checks are running
        server.pause()
        try await Task.sleep(for: .milliseconds(150))  // a PING is on its way, unanswered
        let time = await elapsed {
            await #expect { try await connection.send("ECHO", "behind the ping") } throws: { error in
                isRedisError(error, .connectionClosed) || isRedisError(error, .timeout)
            }
        }
        #expect(time < .seconds(8), "\(time)")  // its 300 ms, not the PING's 10 s
        server.resume()
        await admin.close()
        await connection.close()
    }

    @Test func publishRetryCoversAFrozenServerWithTheDefaultHealthCheck() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.commandTimeout = .milliseconds(500)  // shorter than the health check's 5 s + 2 s
        let publisher = try await Publisher.connect(to: configuration, retry: .whileReconnecting(upTo: .seconds(20)))
        #expect(try await publisher.publish("warm", to: "c") == 0)
        server.pause()
        let publish = Task { try await publisher.publish("through the freeze", to: "c") }
        try await Task.sleep(for: .seconds(1))
        server.resume()
        #expect(try await publish.value == 0)  // cut off as connectionClosed, sent again on the new connection
        await publisher.close()
    }


    @Test func anIdlePublishersHealthCheckDetectsAFrozenServerAndTheConnectionIsReplaced() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.commandTimeout = .seconds(30)  // long: the health check is what notices
        configuration.healthCheckInterval = .milliseconds(200)
        configuration.healthCheckTimeout = .milliseconds(300)
        let publisher = try await Publisher.connect(to: configuration)
        let events = EventRecorder(publisher.events())
        #expect(try await publisher.publish("before", to: "c") == 0)
        server.pause()
        let started = ContinuousClock.now
        let cause = try await events.disconnected()
        #expect(cause.code == .timeout && cause.message.contains("health check"), "\(cause)")
        #expect(ContinuousClock.now - started < .seconds(15))  // not the 30 s command timeout
        // While it is down, a publish fails at once instead of waiting on a dead socket.
        let time = await elapsed {
            await #expect { try await publisher.publish("down", to: "c") } throws: { isRedisError($0, .connectionClosed) }
        }
        #expect(time < .seconds(10))  // at once, not after the 30 s command timeout (a loaded loop may take a moment)
        server.resume()
        try await events.reconnected()
        #expect(try await publisher.publish("after", to: "c") == 0)
        await publisher.close()
    }

    @Test func publishesInFlightToAFrozenServerFailWithTheDeadConnection() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.commandTimeout = .milliseconds(800)
        let publisher = try await Publisher.connect(to: configuration)
        let events = EventRecorder(publisher.events())
        server.pause()
        let inFlight = (0..<8).map { index in Task { try await publisher.publish("frozen \(index)", to: "c") } }
        for call in inFlight {
            await #expect { try await call.value } throws: { isRedisError($0, .connectionClosed) }
        }
        // Declared dead by a deadline: the overdue command's (normally), or the health check's when a loaded machine
        // (a full sanitizer run) delays the command timer past it.
        let cause = try await events.disconnected()
        #expect(cause.code == .timeout, "\(cause)")
        #expect(cause.message.contains("nothing else from the server") || cause.message.contains("health check"), "\(cause)")
        server.resume()
        try await events.reconnected()
        await publisher.close()
    }

    @Test func publishRetryWhileReconnectingCoversAFrozenServer() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.healthCheckInterval = .milliseconds(200)
        configuration.healthCheckTimeout = .milliseconds(300)
        let publisher = try await Publisher.connect(to: configuration, retry: .whileReconnecting(upTo: .seconds(20)))
        let subscriber = try await Subscriber.connect(to: configuration)
        let subscription = try await subscriber.subscribe(to: "kept")
        server.pause()
        let publish = Task { try await publisher.publish("sent through the freeze", to: "kept") }
        try await Task.sleep(for: .seconds(1))
        server.resume()
        // Cut off by the dead connection (connectionClosed), sent again once the new one is up; the subscriber
        // resubscribed meanwhile (or its connection survived), so it may count 1 or, if it is still resubscribing, 0.
        _ = try await publish.value
        try await waitUntil { (try? await publisher.publish("marker", to: "kept")) == 1 }
        let received = try await collect(subscription, 1).map(\.string)
        #expect(received == ["sent through the freeze"] || received == ["marker"])
        await subscriber.close()
        await publisher.close()
    }

    @Test func outstandingWorkIsBoundedAndPastTheBoundACallFailsAtOnce() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.maximumPendingCommands = 100
        configuration.maximumPendingBytes = 1 << 20
        configuration.healthCheckInterval = nil  // keep the frozen connection: this test is about the bound
        configuration.commandTimeout = .seconds(30)
        let publisher = try await Publisher.connect(to: configuration)
        let inbox = publisher.connection.core.inbox
        server.pause()
        let refused = Locked(0)
        let calls = (0..<150).map { index in
            Task {
                do {
                    return try await publisher.publish("m\(index)", to: "c")
                } catch let error as RedisError where error.code == .overloaded {
                    refused.withLock { $0 += 1 }
                    throw error
                }
            }
        }
        // Every call has been made: 100 wait for the frozen server, 50 were refused at once.
        try await waitUntil { inbox.outstanding.commands == 100 && refused.withLock { $0 } == 50 }
        // A large value passes the byte bound too: refused at once, nothing written.
        await #expect {
            try await publisher.publish([UInt8](repeating: 1, count: 2 << 20), to: "c")
        } throws: { error in
            isRedisError(error, .overloaded) && "\(error)".contains("maximumPendingCommands 100")
        }
        server.resume()
        var delivered = 0
        for call in calls where (try? await call.value) != nil { delivered += 1 }
        #expect(delivered == 100)
        try await waitUntil { inbox.outstanding == (0, 0) }
        // With nothing outstanding, one call larger than the byte bound is sent.
        #expect(try await publisher.publish([UInt8](repeating: 1, count: 2 << 20), to: "c") == 0)
        await publisher.close()
    }

    @Test func theByteBoundHoldsWhileFewCommandsWait() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.maximumPendingBytes = 1 << 20
        configuration.healthCheckInterval = nil
        configuration.commandTimeout = .seconds(30)
        let publisher = try await Publisher.connect(to: configuration)
        let inbox = publisher.connection.core.inbox
        server.pause()
        let value = [UInt8](repeating: 7, count: 400 * 1024)
        let first = Task { try await publisher.publish(value, to: "c") }
        try await waitUntil { inbox.outstanding.commands == 1 }
        let second = Task { try await publisher.publish(value, to: "c") }
        try await waitUntil { inbox.outstanding.commands == 2 }
        // Two commands wait, far below 100,000; 1.2 MB would pass the 1 MiB byte bound.
        await #expect { try await publisher.publish(value, to: "c") } throws: { isRedisError($0, .overloaded) }
        server.resume()
        #expect(try await first.value == 0)
        #expect(try await second.value == 0)
        await publisher.close()
    }

    @Test func aLargeBacklogIsFedToHiredisInBoundedPiecesAndEveryReplyFindsItsCaller() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.healthCheckInterval = nil
        configuration.commandTimeout = .seconds(30)
        // A loop of its own: 20 MB through the shared one would slow every test running alongside.
        let connection = try await RedisConnection.connect(
            to: configuration, logger: RedisConnection.disabledLogger, on: EventLoop(name: "backlog-test"))
        server.pause()
        // 20 MB of commands for a frozen server: more than the socket buffers take.
        let calls = (0..<100).map { index in
            Task { () throws -> Bool in
                let payload = "\(index):" + String(repeating: Character(UnicodeScalar(UInt8(65 + index % 26))), count: 200_000)
                return try await connection.send("ECHO", payload).string == payload
            }
        }
        try await waitUntil { connection.core.inbox.outstanding.commands == 100 }
        let core = connection.core
        let buffered = await onLoop(core) { core.bufferedOutput }
        #expect(buffered.hiredis <= ConnectionCore.outputHighWater, "\(buffered)")
        #expect(buffered.backlog > 1_000_000, "\(buffered)")
        server.resume()
        var matched = 0
        for call in calls where try await call.value { matched += 1 }
        #expect(matched == 100)
        #expect(await onLoop(core) { core.bufferedOutput } == (0, 0))
        await connection.close()
    }

    @Test func theSubscribersOwnCommandsQueueBehindABacklogAndKeepTheirReplies() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.commandTimeout = .seconds(30)
        // The server stays frozen for as long as the forty tasks take to submit (over 10 s under TSan beside the
        // cluster suite): the health check would rightly call it dead. This test is about the backlog's order.
        configuration.healthCheckInterval = nil
        // A loop of its own: 20 MB through the shared one would slow every test running alongside.
        let subscriber = try await Subscriber.connect(
            to: configuration, logger: RedisConnection.disabledLogger, on: EventLoop(name: "subscriber-backlog-test"))
        let admin = try await RedisConnection.connect(to: .init(url: server.url))
        server.pause()
        // Forty SUBSCRIBEs of 500 KB channel names: 20 MB of the package's own commands for a frozen server, more
        // than the socket buffers take.
        let names = (0..<40).map { "\($0):" + String(repeating: "n", count: 500_000) }
        let subscribing = names.map { name in Task { try await subscriber.subscribe(to: name) } }
        let core = subscriber.lifetime.core.connection
        // Waited for, not slept on: under a sanitizer the forty tasks take a while to build and submit their names
        // (over 10 s in a TSan run beside the cluster suite).
        try await waitUntil(timeout: .seconds(60)) { await onLoop(core) { core.bufferedOutput.backlog } > 0 }
        server.resume()
        var subscriptions: [Subscription] = []
        for task in subscribing { subscriptions.append(try await task.value) }  // each confirmed by its own reply
        for (index, name) in names.enumerated() {
            #expect(try await admin.publish("to \(index)", to: name) == 1)
        }
        for (index, subscription) in subscriptions.enumerated() {
            #expect(try await collect(subscription, 1).map(\.string) == ["to \(index)"])
        }
        await admin.close()
        await subscriber.close()
    }

    @Test func tcpKeepaliveIsOnForTcpConnections() async throws {
        let connection = try await SharedServer.connect()
        let core = connection.core
        let keepAlive = await onLoop(core) { core.keepAlive }
        #expect(keepAlive?.enabled == true && keepAlive?.idleSeconds == 15)
        await connection.close()
    }

    @Test func aReusedDedicatedConnectionHonoursAShorterTimeout() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.commandTimeout = .milliseconds(500)
        let connection = try await RedisConnection.connect(to: configuration)
        let key = uniqueName()
        let forever = Task { try await connection.sendBlocking("BLPOP", key, 0) }  // a deadline decades away
        try await waitUntil { connection.dedicated.count.busy == 1 }
        try await connection.send("RPUSH", key, "x")
        _ = try await forever.value
        #expect(connection.dedicated.count == (idle: 1, busy: 0))
        server.pause()
        // The same connection, now with a 1 s block: it must give up about 1.5 s later, not decades later.
        let short = Task { try await connection.sendBlocking("BLPOP", key, 1) }
        let done = Locked(false)
        Task {
            _ = try? await short.value
            done.withLock { $0 = true }
        }
        try await waitUntil { done.withLock { $0 } }
        await #expect { try await short.value } throws: { error in
            isRedisError(error, .timeout) || isRedisError(error, .connectionClosed)
        }
        server.resume()
        await connection.close()
    }

    // MARK: Addresses

    @Test func aBlackHoledFirstAddressUsesOnlyItsShareOfTheConnectTimeout() async throws {
        let hole = try BlackHole()
        let server = try RedisServer.start()
        defer { server.stop() }
        let host = "two-addresses-\(UUID().uuidString.prefix(8)).test"
        AddressResolver.overrides.withLock {
            $0[host] = [.tcp(ip: "127.0.0.1", port: hole.port), .tcp(ip: "127.0.0.1", port: server.port)]
        }
        defer { _ = AddressResolver.overrides.withLock { $0.removeValue(forKey: host) } }
        var configuration = RedisConfiguration(endpoint: .tcp(host: host, port: server.port))
        configuration.connectTimeout = .seconds(4)
        var connection: RedisConnection?
        let time = try await elapsed { connection = try await RedisConnection.connect(to: configuration) }
        // Half of the 4 s on the black hole, then the second address in what is left (before, the black hole took it
        // all and the connect failed).
        #expect(time >= .milliseconds(1800), "\(time)")
        #expect(try await connection?.ping() == "PONG")
        await connection?.close()
    }

    // MARK: Pushes

    @Test func anInvalidationPushIsDeliveredWithItsKeysAndNeverResetsTheConnection() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.clientName = "invalidations"
        let subscriber = try await Subscriber.connect(to: configuration)
        let events = EventRecorder(subscriber.events())
        let invalidations = try await subscriber.subscribe(to: "__redis__:invalidate")
        let admin = try await RedisConnection.connect(to: .init(url: server.url))
        let list = try await admin.send("CLIENT", "LIST").string ?? ""
        let line = try #require(list.split(separator: "\n").first { $0.contains("name=invalidations") })
        let id = try #require(line.split(separator: " ").first { $0.hasPrefix("id=") }?.dropFirst(3))
        let tracking = try await RedisConnection.connect(to: .init(url: server.url))
        try await tracking.send("CLIENT", "TRACKING", "on", "REDIRECT", String(id))
        try await tracking.send("SET", "cached", "1")
        _ = try await tracking.send("GET", "cached")
        try await admin.send("SET", "cached", "2")
        try await admin.send("FLUSHALL")
        let messages = try await collect(invalidations, 2)
        #expect(messages.map(\.channel) == ["__redis__:invalidate", "__redis__:invalidate"])
        #expect(messages.first?.payloadValue == .array([.bulkString(Array("cached".utf8))]))
        #expect(messages.first?.payload == [])
        #expect("\(messages[0])" == #"__redis__:invalidate: ["cached"]"#)
        #expect(messages.last?.payloadValue == .null)  // FLUSHALL invalidates everything
        #expect(!events.all.contains { if case .disconnected = $0 { true } else { false } })
        for connection in [tracking, admin] { await connection.close() }
        await subscriber.close()
    }

    @Test func aMalformedMessagePushIsDroppedAndCounted() async throws {
        let server = try FakeServer { client in
            guard client.acceptHandshake(), client.readCommand() == ["SUBSCRIBE", "ch"] else { return }
            client.write("*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n")
            client.write("*3\r\n$7\r\nmessage\r\n:42\r\n$4\r\nlost\r\n")  // the channel is not a string
            client.write("*2\r\n$7\r\nmessage\r\n$2\r\nch\r\n")  // too short
            client.write("*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$4\r\nkept\r\n")
            client.waitForClose()
        }
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.healthCheckInterval = nil
        let subscriber = try await Subscriber.connect(to: configuration)
        let events = EventRecorder(subscriber.events())
        let subscription = try await subscriber.subscribe(to: "ch")
        #expect(try await collect(subscription, 1).map(\.string) == ["kept"])
        #expect(subscriber.discardedPushCount == 2)
        #expect(!events.all.contains { if case .disconnected = $0 { true } else { false } })
        subscriber.lifetime.core.connection.forceClose()
    }

    // MARK: Hostile replies

    @Test func aReplyNestedThousandsDeepIsAProtocolErrorNotACrash() async throws {
        let server = try FakeServer { client in
            guard client.acceptHandshake() else { return }
            while let command = client.readCommand() {
                if command.first == "DEEP" {
                    client.write(String(repeating: "*1\r\n", count: 25_000) + ":1\r\n")
                } else if command.first == "NESTED" {
                    client.write(String(repeating: "*1\r\n", count: 100) + ":7\r\n")
                } else {
                    client.write("+OK\r\n")
                }
            }
        }
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.reconnect = .disabled
        let connection = try await RedisConnection.connect(to: configuration)
        if HiredisVersion.major >= 1 {
            // 100 levels: fine (hiredis 0.14 refuses more than 7 by itself).
            var value = try await connection.send("NESTED")
            var depth = 0
            while case .array(let elements) = value, elements.count == 1 {
                value = elements[0]
                depth += 1
            }
            #expect(depth == 100 && value == .integer(7))
        }
        let events = EventRecorder(connection.events())
        await #expect { try await connection.send("DEEP") } throws: { isRedisError($0, .connectionClosed) }
        let cause = try await events.disconnected()
        #expect(cause.code == .protocolError, "\(cause)")
    }

    @Test func unexpectedRepliesAreNamedByShapeNeverByContent() async throws {
        let server = try FakeServer { client in
            guard client.acceptHandshake(), client.readCommand() != nil else { return }
            client.write("+OK\r\n$19\r\nsecret-session-9f3e\r\n")  // the reply, then one nobody asked for
            client.waitForClose()
        }
        defer { server.stop() }
        let storage = CapturingLogHandler.Storage()
        var configuration = try RedisConfiguration(url: server.url)
        configuration.reconnect = .disabled
        configuration.healthCheckInterval = nil  // the script answers the first command: it must be the ECHO
        let connection = try await RedisConnection.connect(
            to: configuration, logger: Logger(label: "test") { _ in CapturingLogHandler(storage: storage) })
        let events = EventRecorder(connection.events())
        #expect(try await connection.send("ECHO", "x") == .simpleString("OK"))
        let cause = try await events.disconnected()
        #expect(cause.code == .protocolError)
        #expect(cause.message.contains("a bulk string of 19 bytes"), "\(cause)")
        #expect(!cause.message.contains("secret"))
        _ = try #require(await events.next { if case .closed = $0 { true } else { false } })
        #expect(!storage.text.contains("secret"))
    }

    // MARK: Events end with their owner

    @Test func subscriptionEventsEndWhenTheSubscriptionEndsInAnyWay() async throws {
        let (subscriber, publisher) = try await pubSubPair()
        func listener(_ subscription: Subscription) -> Task<Void, Never> {
            let events = subscription.events()
            return Task { for await _ in events {} }
        }
        // cancel()
        let cancelled = try await subscriber.subscribe(to: uniqueName("ch"))
        let first = listener(cancelled)
        cancelled.cancel()
        #expect(await finishes(first))
        // unsubscribe(), after a loop was left (which keeps the subscription).
        let channel = uniqueName("ch")
        let left = try await subscriber.subscribe(to: channel)
        let second = listener(left)
        try await publisher.publish("one", to: channel)
        for try await _ in left { break }
        #expect(!left.hasEnded)
        await left.unsubscribe()
        #expect(await finishes(second))
        // Released without being iterated.
        var released: Subscription? = try await subscriber.subscribe(to: uniqueName("ch"))
        let third = listener(released!)
        released = nil
        #expect(await finishes(third))
        _ = released
        // The subscriber's and the publisher's own events end with close().
        let subscriberEvents = Task { for await _ in subscriber.events() {} }
        let publisherEvents = Task { for await _ in publisher.events() {} }
        await subscriber.close()
        await publisher.close()
        #expect(await finishes(subscriberEvents))
        #expect(await finishes(publisherEvents))
    }

    @Test func connectionEventsEndWhenTheConnectionIsReleased() async throws {
        var connection: RedisConnection? = try await SharedServer.connect()
        let events = connection!.events()
        let listening = Task { for await _ in events {} }
        connection = nil
        #expect(await finishes(listening))
        _ = connection
    }

    // MARK: Session state

    @Test func concurrentTransactionsNeverInterleaveOnTheSharedConnection() async throws {
        let connection = try await SharedServer.connect()
        let key = uniqueName()
        await #expect { try await connection.send("MULTI") } throws: { isRedisError($0, .invalidArgument) }
        let mismatches = try await withThrowingTaskGroup(of: Int.self) { group in
            for task in 0..<50 {
                group.addTask {
                    var wrong = 0
                    for round in 0..<10 {
                        let mine = "task \(task) round \(round)"
                        let replies = try await connection.transaction([["SET", RedisArgument(key), RedisArgument(mine)], ["GET", RedisArgument(key)]])
                        if replies.last?.string != mine { wrong += 1 }
                        try await connection.send("SET", key, "plain write between transactions")
                    }
                    return wrong
                }
            }
            return try await group.reduce(0, +)
        }
        #expect(mismatches == 0)
        // A command refused while queueing aborts the whole transaction, and the error names it.
        await #expect {
            try await connection.transaction([["SET", RedisArgument(key), "x"], ["INCRBY", RedisArgument(key)]])
        } throws: { error in
            "\(error)".contains("command 2 was refused") && "\(error)".contains("wrong number of arguments")
        }
        #expect(try await connection.send("GET", key).string == "plain write between transactions")  // nothing ran
        await connection.close()
    }

    @Test func aBlockingCommandRunsOnItsOwnConnectionAndDelaysNobody() async throws {
        let connection = try await SharedServer.connect()
        let key = uniqueName()
        let blocked = Task { try await connection.sendBlocking("BLPOP", key, 0) }
        try await waitUntil { connection.dedicated.count.busy == 1 }
        // Behind a BLPOP 0 on the same connection, these would wait until their command timeout.
        var pongs = 0
        for _ in 0..<100 where try await connection.ping() == "PONG" { pongs += 1 }
        #expect(pongs == 100)
        try await connection.send("RPUSH", key, "job")
        #expect(try await blocked.value == .array([.bulkString(Array(key.utf8)), .bulkString(Array("job".utf8))]))
        #expect(connection.dedicated.count == (idle: 1, busy: 0))  // kept for the next call
        // A cancelled blocking call returns at once, and its connection is closed (the server stops blocking for it).
        let cancelled = Task { try await connection.sendBlocking("BLPOP", key, 0) }
        try await waitUntil { connection.dedicated.count.busy == 1 }
        cancelled.cancel()
        await #expect(throws: RedisError(.cancelled, "the task was cancelled")) { try await cancelled.value }
        #expect(connection.dedicated.count == (idle: 0, busy: 0))
        // close() ends a blocking call in progress.
        let pending = Task { try await connection.sendBlocking("BLPOP", key, 0) }
        try await waitUntil { connection.dedicated.count.busy == 1 }
        await connection.close()
        await #expect { try await pending.value } throws: { isRedisError($0, .connectionClosed) }
    }

    // MARK: Shutdown

    @Test func closeAgainstAFrozenServerIsBoundedAndCancellationForcesIt() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.healthCheckInterval = nil
        configuration.commandTimeout = .seconds(60)
        let subscriber = try await Subscriber.connect(to: configuration)
        // Held, so the close has a live subscription to unsubscribe (a released one unsubscribes at once).
        let subscription = try await subscriber.subscribe(to: "frozen")
        defer { withExtendedLifetime(subscription) {} }
        server.pause()  // the UNSUBSCRIBE of a graceful close will get no acknowledgement
        let closed = Locked(false)
        let closing = Task {
            await subscriber.close()
            closed.withLock { $0 = true }
        }
        try await Task.sleep(for: .milliseconds(300))
        #expect(!closed.withLock { $0 })  // still waiting for the acknowledgement: there is something to force
        let forced = await elapsed {
            closing.cancel()
            await closing.value
        }
        #expect(forced < .seconds(15), "\(forced)")  // not the 60 s command timeout

        configuration.commandTimeout = .milliseconds(500)
        server.resume()
        let bounded = try await Subscriber.connect(to: configuration)
        let held = try await bounded.subscribe(to: "frozen")
        defer { withExtendedLifetime(held) {} }
        server.pause()
        let time = await elapsed { await bounded.close() }
        #expect(time >= .milliseconds(400) && time < .seconds(5), "\(time)")  // the command timeout, once
        server.resume()
    }

    @Test func aServiceGroupThatEscalatesShutdownToCancellationEndsAtOnce() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.healthCheckInterval = nil
        configuration.commandTimeout = .seconds(60)
        let subscriber = try await Subscriber.connect(to: configuration)
        let publisher = try await Publisher.connect(to: configuration)
        let subscription = try await subscriber.subscribe(to: "frozen")  // held: the close has something to wait for
        defer { withExtendedLifetime(subscription) {} }
        var groupConfiguration = ServiceGroupConfiguration(
            services: [.init(service: subscriber), .init(service: publisher)], logger: RedisConnection.disabledLogger)
        groupConfiguration.maximumGracefulShutdownDuration = .milliseconds(300)
        let group = ServiceGroup(configuration: groupConfiguration)
        let running = Task { try await group.run() }
        try await Task.sleep(for: .milliseconds(200))
        server.pause()
        let time = await elapsed {
            await group.triggerGracefulShutdown()
            _ = try? await running.value
        }
        #expect(time < .seconds(15), "\(time)")  // not the 60 s command timeout
        server.resume()
    }

    @Test func cancelledWaitsForTheConnectionDoNotPileUp() async throws {
        var server = try RedisServer.start()
        let port = server.port
        var configuration = try RedisConfiguration(url: server.url)
        configuration.reconnect = ReconnectPolicy(initialDelay: .milliseconds(50), maximumDelay: .milliseconds(100))
        let connection = try await RedisConnection.connect(to: configuration)
        let events = EventRecorder(connection.events())
        server.stop()
        _ = try await events.disconnected()
        for _ in 0..<100 {
            let waiting = Task { try await connection.waitUntilConnected(before: .now + .seconds(30)) }
            try await Task.sleep(for: .milliseconds(2))
            waiting.cancel()
            _ = try? await waiting.value
        }
        let last = Task { try await connection.waitUntilConnected(before: .now + .seconds(30)) }
        try await Task.sleep(for: .milliseconds(50))
        let core = connection.core
        #expect(await onLoop(core) { core.readyWaiterCount } <= 2)
        server = try RedisServer.start(port: port)
        defer { server.stop() }
        #expect(try await last.value)
        await connection.close()
    }
}

/// Whether `task` finishes within `timeout` (polled: awaiting a task's value cannot be abandoned).
func finishes(_ task: Task<Void, Never>, within timeout: Duration = .seconds(5)) async -> Bool {
    let done = Locked(false)
    Task {
        await task.value
        done.withLock { $0 = true }
    }
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if done.withLock({ $0 }) { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return false
}
