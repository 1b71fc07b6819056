import Foundation
@testable import RedisPubSub
import ServiceLifecycle
import Testing

/// Records a stream's events as they come, for tests to wait on with a deadline (a stream's iterator cannot be
/// raced against a timer).
final class EventRecorder<Event: Sendable>: Sendable {
    private struct State {
        var events: [Event] = []
        var cursor = 0
    }
    private let state = Locked(State())
    private let task = Locked<Task<Void, Never>?>(nil)

    init(_ stream: AsyncStream<Event>) {
        let recording = Task { [weak self] in
            for await event in stream {
                guard let self else { return }
                self.state.withLock { $0.events.append(event) }
            }
        }
        task.withLock { $0 = recording }
    }

    deinit { task.withLock { $0?.cancel() } }

    /// Every event so far.
    var all: [Event] { state.withLock { $0.events } }

    /// The next event after the last one returned that matches `predicate`, waiting up to `timeout`.
    func next(
        timeout: Duration = .seconds(15),
        sourceLocation: SourceLocation = #_sourceLocation,
        where predicate: @escaping (Event) -> Bool = { _ in true }
    ) async -> Event? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let found = state.withLock { state -> Event? in
                while state.cursor < state.events.count {
                    let event = state.events[state.cursor]
                    state.cursor += 1
                    if predicate(event) { return event }
                }
                return nil
            }
            if let found { return found }
            try? await Task.sleep(for: .milliseconds(5))
        }
        Issue.record("no matching event within \(timeout)", sourceLocation: sourceLocation)
        return nil
    }
}

/// A test's expectation did not hold and it cannot go on; the failure is already recorded.
struct ExpectationFailed: Error {}

/// Events that report a lost connection with its cause.
protocol DisconnectReporting: Sendable {
    /// The cause, if this is the event of a lost connection.
    var disconnectCause: RedisError? { get }
}

extension ConnectionEvent: DisconnectReporting {
    var disconnectCause: RedisError? { if case .disconnected(_, let cause) = self { cause } else { nil } }
}

extension SubscriptionEvent: DisconnectReporting {
    var disconnectCause: RedisError? { if case .disconnected(_, let cause) = self { cause } else { nil } }
}

extension EventRecorder where Event: DisconnectReporting {
    /// The cause of the next disconnect; records a failure and throws when none comes.
    func disconnected(sourceLocation: SourceLocation = #_sourceLocation) async throws -> RedisError {
        guard let cause = await next(sourceLocation: sourceLocation, where: { $0.disconnectCause != nil })?.disconnectCause
        else { throw ExpectationFailed() }
        return cause
    }
}

extension EventRecorder where Event == ConnectionEvent {
    /// The downtime of the next `.reconnected`; records a failure and throws when none comes.
    @discardableResult
    func reconnected(sourceLocation: SourceLocation = #_sourceLocation) async throws -> Duration {
        guard case .reconnected(_, let downtime)? = await next(sourceLocation: sourceLocation, where: {
            if case .reconnected = $0 { true } else { false }
        }) else { throw ExpectationFailed() }
        return downtime
    }
}

extension EventRecorder where Event == SubscriptionEvent {
    /// The gap of the next `.resubscribed`; records a failure and throws when none comes.
    @discardableResult
    func resubscribed(sourceLocation: SourceLocation = #_sourceLocation) async throws -> Duration {
        guard case .resubscribed(_, let gap)? = await next(sourceLocation: sourceLocation, where: {
            if case .resubscribed = $0 { true } else { false }
        }) else { throw ExpectationFailed() }
        return gap
    }
}

@Suite("Resilience: reconnect, resubscribe, health checks, shutdown")
struct ResilienceTests {
    @Test func serverKilledAndRestartedTwentyTimesResubscribesWithinASecond() async throws {
        var server = try RedisServer.start()
        let port = server.port
        var configuration = try RedisConfiguration(url: server.url)
        configuration.connectTimeout = .seconds(2)
        let subscriber = try await Subscriber.connect(to: configuration)
        let subscription = try await subscriber.subscribe(to: "restart", "other")
        let events = EventRecorder(subscription.events())
        var recoveries: [Duration] = []
        var received: [String] = []
        for trial in 0..<20 {
            server.stop()  // SIGKILL
            let cause = try await events.disconnected()
            #expect(cause.code == .connectionClosed)
            server = try RedisServer.start(port: port)  // returns once the server accepts connections
            let accepting = ContinuousClock.now
            try await events.resubscribed()
            recoveries.append(ContinuousClock.now - accepting)
            // And messages flow again.
            let publisher = try await RedisConnection.connect(to: configuration)
            #expect(try await publisher.publish("after \(trial)", to: "restart") == 1)
            await publisher.close()
            // Read before the next kill: Redis counts a receiver when it queues the message, and a SIGKILL between
            // its reply to PUBLISH and its write to the subscriber (written after the publisher) loses it.
            received.append(try await subscription.nextMessage(timeout: .seconds(20))?.string ?? "(none)")
        }
        server.stop()
        #expect(received == (0..<20).map { "after \($0)" })
        #expect(recoveries.count == 20)
        let p95 = recoveries.sorted()[Int((Double(recoveries.count) * 0.95).rounded(.up)) - 1]
        print("resubscribe after restart: p95 \(p95), max \(recoveries.max() ?? .zero), over \(recoveries.count) trials")
        // Within a second normally (measured p95 0.1-0.3 s); a sanitizer build on a loaded machine runs several times
        // slower everywhere, the reconnect path included.
        let sanitized = ProcessInfo.processInfo.environment["TSAN_OPTIONS"] != nil
            || ProcessInfo.processInfo.environment["ASAN_OPTIONS"] != nil
        #expect(p95 < (sanitized ? .seconds(4) : .seconds(1)), "p95 recovery \(p95)")
        await subscriber.close()
    }

    @Test func subscribeWhileReconnectingWaitsForTheReconnect() async throws {
        var server = try RedisServer.start()
        let port = server.port
        var configuration = try RedisConfiguration(url: server.url)
        configuration.connectTimeout = .seconds(5)
        let subscriber = try await Subscriber.connect(to: configuration)
        let events = EventRecorder(subscriber.events())
        server.stop()
        _ = try await events.disconnected()
        let waiting = Task { try await subscriber.subscribe(to: "late") }
        try await Task.sleep(for: .milliseconds(300))
        server = try RedisServer.start(port: port)
        defer { server.stop() }
        let subscription = try await waiting.value  // returns once the new connection acknowledged it
        let publisher = try await RedisConnection.connect(to: configuration)
        #expect(try await publisher.publish("hello", to: "late") == 1)
        #expect(try await collect(subscription, 1).map(\.string) == ["hello"])
        await publisher.close()
        await subscriber.close()
    }

    @Test func subscribeWhileDownGivesUpAtTheConnectTimeoutAndCancelsCleanly() async throws {
        let server = try RedisServer.start()
        var configuration = try RedisConfiguration(url: server.url)
        configuration.connectTimeout = .milliseconds(500)
        let subscriber = try await Subscriber.connect(to: configuration)
        // The cancellation half waits for a reconnect far longer than it takes to cancel, on a loaded machine too.
        var patient = configuration
        patient.connectTimeout = .seconds(30)
        let patientSubscriber = try await Subscriber.connect(to: patient)
        let events = EventRecorder(subscriber.events())
        let patientEvents = EventRecorder(patientSubscriber.events())
        server.stop()
        _ = try await events.disconnected()
        _ = try await patientEvents.disconnected()
        let time = await elapsed {
            await #expect { try await subscriber.subscribe(to: "never") } throws: { isRedisError($0, .connectionClosed) }
        }
        #expect(time >= .milliseconds(400) && time < .seconds(5))
        let cancelled = Task { try await patientSubscriber.subscribe(to: "cancelled") }
        try await waitUntil { await patientSubscriber.activeSubscriptionCount() == 1 }  // parked, waiting
        cancelled.cancel()
        await #expect(throws: RedisError(.cancelled, "the task was cancelled")) { try await cancelled.value }
        try await waitUntil { await patientSubscriber.activeSubscriptionCount() == 0 }  // nothing left waiting
        await subscriber.close()
        await patientSubscriber.close()
    }

    @Test func clientKillTypePubsubAndNormal() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let admin = try await RedisConnection.connect(to: .init(url: server.url))
        let subscriber = try await Subscriber.connect(to: .init(url: server.url))
        let publisher = try await Publisher.connect(to: .init(url: server.url))
        let subscription = try await subscriber.subscribe(to: "news")
        let patterns = try await subscriber.subscribe(toPatterns: "n*")
        let shards = try await subscriber.subscribe(toShardChannels: "shard")
        let gaps = EventRecorder(subscription.events())
        let subscriberEvents = EventRecorder(subscriber.events())
        let publisherEvents = EventRecorder(publisher.events())

        try await admin.send("CLIENT", "KILL", "TYPE", "pubsub")
        #expect(try await gaps.disconnected().code == .connectionClosed)
        let gap = try await gaps.resubscribed()
        #expect(gap < .seconds(5))
        try await subscriberEvents.reconnected()
        #expect(try await publisher.publish("back", to: "news") == 2)  // channel and pattern, same connection
        #expect(try await publisher.publish("shard back", toShard: "shard") == 1)
        #expect(try await collect(subscription, 1).map(\.string) == ["back"])
        #expect(try await collect(patterns, 1).map(\.string) == ["back"])
        #expect(try await collect(shards, 1).map(\.string) == ["shard back"])

        // The publisher's connection (a normal client) comes back too.
        try await admin.send("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        _ = try await publisherEvents.disconnected()
        try await publisherEvents.reconnected()
        #expect(try await publisher.publish("still", to: "elsewhere") == 0)
        await subscriber.close()
        await publisher.close()
        await admin.close()
    }

    @Test func aFrozenServerIsDetectedByTheHealthCheckAndTheConnectionReplaced() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.healthCheckInterval = .milliseconds(300)
        configuration.healthCheckTimeout = .milliseconds(300)
        configuration.connectTimeout = .milliseconds(500)
        let subscriber = try await Subscriber.connect(to: configuration)
        let subscription = try await subscriber.subscribe(to: "frozen")
        let gaps = EventRecorder(subscription.events())
        server.pause()  // longer than interval + timeout
        let cause = try await gaps.disconnected()
        #expect(cause.code == .timeout)
        #expect(cause.message.contains("health check"))
        try await Task.sleep(for: .milliseconds(500))
        server.resume()
        try await gaps.resubscribed()
        let publisher = try await RedisConnection.connect(to: .init(url: server.url))
        #expect(try await publisher.publish("thawed", to: "frozen") == 1)
        #expect(try await collect(subscription, 1).map(\.string) == ["thawed"])
        await publisher.close()
        await subscriber.close()
    }

    @Test func anIdleHealthyConnectionIsPingedAndKept() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.healthCheckInterval = .milliseconds(100)
        let subscriber = try await Subscriber.connect(to: configuration)
        let subscription = try await subscriber.subscribe(to: "idle")
        let admin = try await RedisConnection.connect(to: .init(url: server.url))
        try await Task.sleep(for: .milliseconds(800))
        // PINGs were sent while subscribed (hiredis would mis-dispatch their replies) and the connection stayed.
        let stats = try await admin.send("INFO", "commandstats").string ?? ""
        let pings = stats.split(whereSeparator: \.isNewline).first { $0.hasPrefix("cmdstat_ping:") }.flatMap { line in
            line.split(separator: "=").dropFirst().first.flatMap { Int($0.split(separator: ",").first ?? "") }
        } ?? 0
        #expect(pings >= 4)  // the handshakes' 2 PINGs plus the health checks
        #expect(try await admin.publish("ok", to: "idle") == 1)
        #expect(try await collect(subscription, 1).map(\.string) == ["ok"])
        await subscriber.close()
        await admin.close()
    }

    /// With a password, the server's "max number of clients reached" arrives where AUTH's reply was expected: it must
    /// still be retried, not taken for a refused password.
    @Test(arguments: [nil, "pw"] as [String?])
    func maxClientsReachedWhileReconnectingRecoversWhenASlotFrees(password: String?) async throws {
        let server = try RedisServer.start(password.map { ["--requirepass", $0] } ?? [])
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.password = password
        configuration.reconnect = ReconnectPolicy(initialDelay: .milliseconds(20), maximumDelay: .milliseconds(100))
        let subscriber = try await Subscriber.connect(to: configuration)
        let subscription = try await subscriber.subscribe(to: "full")
        let events = EventRecorder(subscriber.events())
        let admin = try await RedisConnection.connect(to: configuration)
        // Existing clients stay; new ones are refused with "max number of clients reached".
        try await admin.send("CONFIG", "SET", "maxclients", 1)
        try await admin.send("CLIENT", "KILL", "TYPE", "pubsub")
        let refused = await events.next {
            if case .reconnecting(_, _, let error?) = $0 { error.message.contains("max number of clients") } else { false }
        }
        #expect(refused != nil)
        try await admin.send("CONFIG", "SET", "maxclients", 100)
        try await events.reconnected()
        try await waitUntil { (try? await admin.publish("room", to: "full")) == 1 }
        #expect(try await collect(subscription, 1).map(\.string) == ["room"])
        await subscriber.close()
        await admin.close()
    }

    @Test func aChangedPasswordEndsTheSubscriptionWithAnAuthenticationErrorAndNoRetryLoop() async throws {
        let server = try RedisServer.start(["--requirepass", "old-pw"])
        defer { server.stop() }
        let subscriber = try await Subscriber.connect(to: .init(url: "redis://:old-pw@127.0.0.1:\(server.port)"))
        let subscription = try await subscriber.subscribe(to: "secure")
        let admin = try await RedisConnection.connect(to: .init(url: "redis://:old-pw@127.0.0.1:\(server.port)"))
        func connectionsReceived() async throws -> Int {
            let info = try await admin.send("INFO", "stats").string ?? ""
            let line = info.split(whereSeparator: \.isNewline).first { $0.hasPrefix("total_connections_received:") }
            return Int(line?.split(separator: ":").last ?? "") ?? -1
        }
        try await admin.send("CONFIG", "SET", "requirepass", "new-pw")
        let before = try await connectionsReceived()
        try await admin.send("CLIENT", "KILL", "TYPE", "pubsub")
        await #expect {
            for try await _ in subscription {}
        } throws: { error in
            isRedisError(error, .authenticationFailed)
        }
        try await Task.sleep(for: .milliseconds(300))
        let attempts = try await connectionsReceived() - before
        #expect(attempts <= 2, "\(attempts) reconnect attempts after a failed AUTH")
        await admin.close()
    }

    @Test func aChannelRefusedOnResubscribeFailsThatSubscriptionOnly() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let admin = try await RedisConnection.connect(to: .init(url: server.url))
        try await admin.send("ACL", "SETUSER", "reader", "on", ">pw", "resetchannels", "&news:*", "&sport:*", "+@all")
        let subscriber = try await Subscriber.connect(to: .init(url: "redis://reader:pw@127.0.0.1:\(server.port)"))
        let news = try await subscriber.subscribe(to: "news:today")
        let sport = try await subscriber.subscribe(to: "sport:today")
        let newsGaps = EventRecorder(news.events())
        // The user loses access to sport:* (Redis disconnects it), and the reconnect's resubscribe is refused there.
        try await admin.send("ACL", "SETUSER", "reader", "resetchannels", "&news:*")
        await #expect {
            for try await _ in sport {}
        } throws: { isRedisError($0, .permissionDenied) }
        try await newsGaps.resubscribed()
        #expect(try await admin.publish("still allowed", to: "news:today") == 1)
        #expect(try await collect(news, 1).map(\.string) == ["still allowed"])
        await subscriber.close()
        await admin.close()
    }

    @Test func aServiceGroupsGracefulShutdownClosesSubscriberAndPublisher() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let subscriber = try await Subscriber.connect(to: .init(url: server.url))
        let publisher = try await Publisher.connect(to: .init(url: server.url))
        let subscription = try await subscriber.subscribe(to: "lifecycle")
        try await publisher.publish("before shutdown", to: "lifecycle")
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: subscriber), .init(service: publisher)], logger: RedisConnection.disabledLogger))
        let running = Task { try await group.run() }
        let consumer = Task { () throws -> [String] in
            var received: [String] = []
            for try await message in subscription { received.append(message.string) }
            return received  // ends normally
        }
        try await Task.sleep(for: .milliseconds(200))
        await group.triggerGracefulShutdown()
        try await running.value
        #expect(try await consumer.value == ["before shutdown"])
        await #expect { try await publisher.publish("after", to: "lifecycle") } throws: { isRedisError($0, .connectionClosed) }
    }

    @Test func inFlightCommandsFailPromptlyAndPublishesAreRetriedOnlyWhenAskedTo() async throws {
        let server = try RedisServer.start()
        let port = server.port
        var configuration = try RedisConfiguration(url: server.url)
        configuration.connectTimeout = .seconds(2)
        let plain = try await Publisher.connect(to: configuration)
        let retrying = try await Publisher.connect(to: configuration, retry: .whileReconnecting(upTo: .seconds(10)))
        let blocked = Task { try await plain.connection.sendBlocking("BLPOP", "nothing", 30) }
        try await waitUntil { (try await plain.connection.send("CLIENT", "LIST").string ?? "").contains("cmd=blpop") }
        server.stop()
        let failed = await elapsed {
            await #expect { try await blocked.value } throws: { isRedisError($0, .connectionClosed) }
        }
        #expect(failed < .seconds(10))  // at the loss, not the BLPOP's 30 s
        await #expect { try await plain.publish("lost", to: "c") } throws: { isRedisError($0, .connectionClosed) }
        await #expect {
            try await plain.publish(contentsOf: ["lost", "too"], to: "c")
        } throws: { isRedisError($0, .connectionClosed) }
        let waiting = Task { try await retrying.publish("kept", to: "c") }
        let waitingBatch = Task { try await retrying.publish(contentsOf: ["kept", "too"], to: "c") }
        try await Task.sleep(for: .milliseconds(300))
        let restarted = try RedisServer.start(port: port)
        defer { restarted.stop() }
        #expect(try await waiting.value == 0)  // sent once the connection was back
        #expect(try await waitingBatch.value == [0, 0])
        await plain.close()
        await retrying.close()
    }

    @Test func closeUnsubscribesDrainsAndEndsLoopsNormally() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let subscriber = try await Subscriber.connect(to: .init(url: server.url))
        let admin = try await RedisConnection.connect(to: .init(url: server.url))
        let a = try await subscriber.subscribe(to: "a")
        let b = try await subscriber.subscribe(toPatterns: "b*")
        for index in 0..<100 { try await admin.publish("\(index)", to: "a") }
        try await admin.publish("b", to: "b1")
        let consumers = [a, b].map { subscription in
            Task { () throws -> Int in
                var count = 0
                for try await _ in subscription { count += 1 }
                return count  // a normal end, not an error
            }
        }
        try await Task.sleep(for: .milliseconds(200))
        await subscriber.close()
        #expect(try await consumers[0].value == 100)
        #expect(try await consumers[1].value == 1)
        #expect(try await admin.pubsubNumberOfSubscribers(["a"]) == ["a": 0])
        #expect(try await admin.pubsubNumberOfPatterns() == 0)
        await admin.close()
    }

    /// A connection the server closes between replies (CLIENT KILL; over TLS with close_notify) is not taken for
    /// one cut in the middle of a reply: the cause does not point at the output buffer limit.
    @Test(arguments: [false, true])
    func aCloseBetweenRepliesIsNotTakenForACutReply(tls: Bool) async throws {
        let (server, tlsPort) = tls ? try RedisServer.startTLS() : (try RedisServer.start(), 0)
        defer { server.stop() }
        let subscriber = try await Subscriber.connect(to: tls ? try tlsConfiguration(port: tlsPort) : .init(url: server.url))
        let subscription = try await subscriber.subscribe(to: "between")
        let events = EventRecorder(subscription.events())
        let admin = try await RedisConnection.connect(to: .init(url: server.url))
        for index in 0..<3 { try await admin.publish("small \(index)", to: "between") }
        #expect(try await collect(subscription, 3).count == 3)
        try await admin.send("CLIENT", "KILL", "TYPE", "pubsub")
        let cause = try await events.disconnected()
        #expect(cause.code == .connectionClosed)
        #expect(!cause.message.contains("client-output-buffer-limit"), "\(cause)")
        try await events.resubscribed()
        await admin.close()
        await subscriber.close()
    }

    /// The subscriber's own loop is held busy, so it stops reading however fast the machine is, until the server
    /// has dropped it for its backlog: the gap names that cause, and the bounded buffer dropped instead of growing.
    @Test(arguments: [false, true])
    func overTheServersOutputBufferLimitTheGapNamesTheCauseAndMemoryStaysBounded(tls: Bool) async throws {
        let limit = ["--client-output-buffer-limit", "pubsub 1mb 512kb 0"]
        let (server, tlsPort) = tls ? try RedisServer.startTLS(limit) : (try RedisServer.start(limit), 0)
        defer { server.stop() }
        // A loop of its own: blocking the shared one would stall every other test's I/O and timers.
        let loop = EventLoop(name: "output-buffer-limit-test")
        let subscriber = try await Subscriber.connect(
            to: tls ? try tlsConfiguration(port: tlsPort) : .init(url: server.url), logger: RedisConnection.disabledLogger,
            on: loop)
        let slow = try await subscriber.subscribe(to: "big", bufferingPolicy: .bufferingNewest(10))  // never read
        defer { withExtendedLifetime(slow) {} }
        let gaps = EventRecorder(slow.events())
        let publisher = try await Publisher.connect(to: .init(url: server.url))
        for index in 0..<30 { try await publisher.publish("\(index)", to: "big") }
        try await waitUntil { slow.droppedMessageCount == 20 }  // the bounded policy drops instead of growing

        let release = DispatchSemaphore(value: 0)
        loop.execute { _ = release.wait(timeout: .now() + 60) }  // the subscriber reads nothing until released
        let payload = [UInt8](repeating: 120, count: 256 * 1024)
        var published = 0
        while try await publisher.publish(payload, to: "big") > 0 {  // 0 receivers: the server dropped it
            published += 1
            try #require(published < 1_000, "the server never dropped the stalled subscriber")
        }
        release.signal()
        let cause = try await gaps.disconnected()
        #expect(cause.message.contains("client-output-buffer-limit"), "\(cause)")
        try await gaps.resubscribed()
        let marker = try await subscriber.subscribe(to: "marker")
        try await publisher.publish("small", to: "marker")
        #expect(try await collect(marker, 1).map(\.string) == ["small"])
        await subscriber.close()
        await publisher.close()
    }

    @Test func soakOfTenThousandSeededRandomOperations() async throws {
        var random = JitterRandom(seed: 0x5EED_2026)  // SplitMix64: the same sequence on every run
        let server = try RedisServer.start()
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.reconnect = ReconnectPolicy(initialDelay: .milliseconds(5), maximumDelay: .milliseconds(50))
        let subscriber = try await Subscriber.connect(to: configuration)
        let publisher = try await Publisher.connect(to: configuration, retry: .whileReconnecting(upTo: .seconds(5)))
        let admin = try await RedisConnection.connect(to: configuration)
        let residentBefore = residentMemory()

        final class Live {
            let id: Int
            let channel: String
            let subscription: Subscription
            let consumer: Task<Bool, Never>?  // true once it saw "final:<id>"
            init(id: Int, channel: String, subscription: Subscription, consumer: Task<Bool, Never>?) {
                self.id = id; self.channel = channel; self.subscription = subscription; self.consumer = consumer
            }
        }
        final class Weak { weak var handle: SubscriptionHandle?; init(_ handle: SubscriptionHandle) { self.handle = handle } }
        var created: [Weak] = []  // every subscription of the soak: all must be deallocated once released
        var consumers: [Task<Bool, Never>] = []
        var live: [Live] = []
        var nextID = 0
        var counts = (subscribed: 0, refused: 0, kills: 0, published: 0)
        let names = (0..<20).map { "soak:\($0)" }
        for _ in 0..<10_000 {
            switch random.next() % 100 {
            case 0..<30:  // subscribe, with a consumer or without one
                let channel = names[Int(random.next() % 20)]
                guard let subscription = try? await subscriber.subscribe(to: channel, bufferingPolicy: .bufferingNewest(100)) else {
                    counts.refused += 1
                    continue  // still reconnecting when the connect timeout passed
                }
                counts.subscribed += 1
                created.append(Weak(subscription.handle))
                nextID += 1
                let id = nextID
                let consumer: Task<Bool, Never>? = random.next() % 3 == 0 ? nil : Task {
                    do {
                        for try await message in subscription where message.string == "final:\(id)" { return true }
                    } catch {}
                    return false
                }
                if let consumer { consumers.append(consumer) }
                live.append(Live(id: id, channel: channel, subscription: subscription, consumer: consumer))
            case 30..<38 where !live.isEmpty:  // unsubscribe
                live.remove(at: Int(random.next() % UInt64(live.count))).subscription.cancel()
            case 38..<44 where !live.isEmpty:  // cancel a consuming task
                let index = Int(random.next() % UInt64(live.count))
                live[index].consumer?.cancel()
                live.remove(at: index)
            case 44..<50 where !live.isEmpty:  // drop a subscription (released, never cancelled explicitly)
                let index = Int(random.next() % UInt64(live.count))
                if live[index].consumer == nil { live.remove(at: index) }
            case 50..<51:  // the server kills the connection
                _ = try? await admin.send("CLIENT", "KILL", "TYPE", "pubsub")
                counts.kills += 1
            default:  // publish
                if (try? await publisher.publish("noise", to: names[Int(random.next() % 20)])) != nil { counts.published += 1 }
            }
        }
        // Every surviving, consumed subscription receives a final message.
        try await waitUntil { (try? await subscriber.subscribe(to: "soak:ready")) != nil }
        var finals: [Task<Bool, Never>] = []
        for entry in live {
            guard let consumer = entry.consumer else { continue }
            try await publisher.publish("final:\(entry.id)", to: entry.channel)
            finals.append(consumer)
        }
        var missing = 0
        for consumer in finals where await consumer.value == false { missing += 1 }
        print("soak: \(counts.subscribed) subscribed, \(counts.refused) refused while reconnecting, \(counts.kills) kills, "
            + "\(counts.published) publishes; \(finals.count) survivors checked")
        #expect(missing == 0, "\(missing) of \(finals.count) surviving subscriptions missed their final message")
        #expect(finals.count > 100)  // the check covers many subscriptions
        // Nothing is left behind: once every subscription is released (and its consumer done), no registration and
        // no subscription object survives.
        for entry in live { entry.subscription.cancel() }
        live.removeAll()
        for consumer in consumers { _ = await consumer.value }
        consumers.removeAll()
        try await waitUntil { await subscriber.activeSubscriptionCount() <= 1 }  // only "soak:ready" may remain
        try await waitUntil { created.allSatisfy { $0.handle == nil } }
        let leaked = created.filter { $0.handle != nil }.count
        #expect(leaked == 0, "\(leaked) of \(created.count) subscriptions were never deallocated")
        print("soak: resident memory \((residentMemory() - residentBefore) / 1024 / 1024) MiB above the start (other suites run alongside)")
        await subscriber.close()
        await publisher.close()
        await admin.close()
    }
}

/// This process's resident memory in bytes (Linux `/proc/self/statm`; 0 elsewhere).
func residentMemory() -> Int {
    guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
    let fields = text.split(separator: " ")
    guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
    return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}
