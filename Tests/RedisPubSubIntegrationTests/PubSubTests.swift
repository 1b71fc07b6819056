import Foundation
@testable import RedisPubSub
import Testing

@Suite("Pub/Sub against a real server")
struct PubSubTests {
    @Test func aMessagePublishedRightAfterSubscribeReturnsIsReceived() async throws {
        let (subscriber, publisher) = try await pubSubPair()
        for _ in 0..<50 {
            let channel = uniqueName("ch")
            let subscription = try await subscriber.subscribe(to: channel)
            #expect(try await publisher.publish("first", to: channel) == 1)
            #expect(try await collect(subscription, 1).map(\.string) == ["first"])
        }
        await subscriber.close()
        await publisher.close()
    }

    @Test func publishReturnsTheNumberOfReceivers() async throws {
        let (subscriber, publisher) = try await pubSubPair()
        let other = try await Subscriber.connect(to: try SharedServer.configuration)
        let channel = uniqueName("ch")
        #expect(try await publisher.publish("nobody", to: channel) == 0)
        let one = try await subscriber.subscribe(to: channel)
        #expect(try await publisher.publish("one", to: channel) == 1)
        let pattern = try await other.subscribe(toPatterns: channel + "*")
        #expect(try await publisher.publish("two", to: channel) == 2)  // a pattern subscriber counts too
        _ = (one, pattern)
        await subscriber.close()
        await other.close()
        await publisher.close()
    }

    @Test func stringsBytesDataAndJSON() async throws {
        struct Note: Codable, Equatable { let id: Int; let text: String }
        let (subscriber, publisher) = try await pubSubPair()
        let channel = uniqueName("ch")
        let subscription = try await subscriber.subscribe(to: channel)
        try await publisher.publish("text", to: channel)
        try await publisher.publish([1, 2, 3] as [UInt8], to: channel)
        try await publisher.publish(Data([4, 5]), to: channel)
        try await publisher.publish(json: Note(id: 7, text: "seven"), to: channel)
        let messages = try await collect(subscription, 4)
        #expect(messages.prefix(3).map(\.payload) == [Array("text".utf8), [1, 2, 3], [4, 5]])
        #expect(try messages[3].decode(Note.self) == Note(id: 7, text: "seven"))
        #expect(throws: MessageDecodingError.self) { try messages[0].decode(Note.self) }
        #expect(messages.allSatisfy { $0.channel == channel && $0.pattern == nil && !$0.isSharded })
        await subscriber.close()
        await publisher.close()
    }

    @Test func binarySafeEndToEnd() async throws {
        let (subscriber, publisher) = try await pubSubPair()
        let channel: [UInt8] = Array(uniqueName("bin").utf8) + [0, 0xFF, 0xC3, 0x28, 0]
        let subscription = try await subscriber.subscribe(to: channel)
        var big = [UInt8](repeating: 0, count: 16 * 1024 * 1024)
        for index in big.indices { big[index] = UInt8(truncatingIfNeeded: index &* 7 &+ index >> 11) }
        let payloads: [[UInt8]] = [[0, 1, 0, 0xFE, 0xFF], [], Array("Grüße 世界 🌍".utf8), big]
        for payload in payloads { #expect(try await publisher.publish(payload, to: channel) == 1) }
        let received = try await collect(subscription, payloads.count)
        let identical = received.map(\.payload) == payloads  // not inside #expect: it would print 16 MB on a failure
        #expect(identical, "\(received.map(\.payload.count)) bytes received")
        #expect(received.allSatisfy { $0.channelBytes == channel })
        #expect(received[2].string == "Grüße 世界 🌍")
        await subscriber.close()
        await publisher.close()
    }

    @Test func patternSemantics() async throws {
        let (subscriber, publisher) = try await pubSubPair()
        let base = uniqueName("pat")
        let star = try await subscriber.subscribe(toPatterns: base + ".*")
        let question = try await subscriber.subscribe(toPatterns: base + ".h?llo")
        let set = try await subscriber.subscribe(toPatterns: base + ".h[ae]llo")
        let escaped = try await subscriber.subscribe(toPatterns: base + ".lit\\*")
        for name in ["hello", "hallo", "hillo", "hxllo", "lit*", "litX"] {
            try await publisher.publish(name, to: base + "." + name)
        }
        try await publisher.publish("end", to: base + ".lit*")  // one more for the escaped pattern
        #expect(try await collect(star, 7).map(\.string) == ["hello", "hallo", "hillo", "hxllo", "lit*", "litX", "end"])
        #expect(try await collect(question, 4).map(\.string) == ["hello", "hallo", "hillo", "hxllo"])
        let setMessages = try await collect(set, 2)
        #expect(setMessages.map(\.string) == ["hello", "hallo"])
        #expect(setMessages.allSatisfy { $0.pattern == base + ".h[ae]llo" })
        #expect(try await collect(escaped, 2).map(\.string) == ["lit*", "end"])
        await subscriber.close()
        await publisher.close()
    }

    @Test func messageThenPmessageWhenChannelAndPatternBothMatch() async throws {
        let (subscriber, publisher) = try await pubSubPair()
        let channel = uniqueName("news")
        let pattern = String(channel.dropLast(4)) + "*"
        let subscription = try await subscriber.subscribe(channels: [channel], patterns: [pattern])
        #expect(try await publisher.publish("x", to: channel) == 2)
        let messages = try await collect(subscription, 2)
        #expect(messages.map(\.pattern) == [nil, pattern])
        #expect(messages.allSatisfy { $0.channel == channel && $0.string == "x" })
        await subscriber.close()
        await publisher.close()
    }

    @Test func shardedChannels() async throws {
        let (subscriber, publisher) = try await pubSubPair()
        let channel = uniqueName("shard")
        let subscription = try await subscriber.subscribe(toShardChannels: channel)
        let plain = try await subscriber.subscribe(to: channel)  // same name, other namespace
        #expect(try await publisher.publish("sharded", toShard: channel) == 1)
        #expect(try await publisher.publish("plain", to: channel) == 1)
        #expect(try await publisher.connection.pubsubShardChannels(matching: channel) == [RedisName(channel)])
        #expect(try await publisher.connection.pubsubShardNumberOfSubscribers([channel]) == [RedisName(channel): 1])
        let message = try await collect(subscription, 1)
        #expect(message.map(\.string) == ["sharded"])
        #expect(message.first?.isSharded == true)
        #expect(try await collect(plain, 1).map(\.string) == ["plain"])
        subscription.cancel()
        try await waitUntil { try await publisher.connection.pubsubShardNumberOfSubscribers([channel]) == [RedisName(channel): 0] }
        await subscriber.close()
        await publisher.close()
    }

    @Test func introspection() async throws {
        let server = try RedisServer.start()  // PUBSUB NUMPAT counts every client's patterns: a private server
        defer { server.stop() }
        let subscriber = try await Subscriber.connect(to: .init(url: server.url))
        let publisher = try await Publisher.connect(to: .init(url: server.url))
        let channel = uniqueName("intro")
        let before = try await publisher.connection.pubsubNumberOfPatterns()
        let s1 = try await subscriber.subscribe(to: channel)
        let s2 = try await subscriber.subscribe(toPatterns: channel + "*")
        #expect(try await publisher.connection.pubsubChannels(matching: channel) == [RedisName(channel)])
        #expect(try await publisher.connection.pubsubNumberOfSubscribers([channel, channel + "-none"]) == [RedisName(channel): 1, RedisName(channel + "-none"): 0])
        #expect(try await publisher.connection.pubsubNumberOfPatterns() == before + 1)
        s1.cancel()
        s2.cancel()
        try await waitUntil { try await publisher.connection.pubsubNumberOfSubscribers([channel]) == [RedisName(channel): 0] }
        try await waitUntil { try await publisher.connection.pubsubNumberOfPatterns() == before }
        await subscriber.close()
        await publisher.close()
    }

    @Test func fanOutToFiftySubscriptionsOnOneConnection() async throws {
        let (subscriber, publisher) = try await pubSubPair()
        let channel = uniqueName("fan")
        var subscriptions: [Subscription] = []
        for _ in 0..<50 { subscriptions.append(try await subscriber.subscribe(to: channel)) }
        #expect(try await publisher.connection.pubsubNumberOfSubscribers([channel]) == [RedisName(channel): 1])  // one connection, one server subscription
        for index in 0..<100 { #expect(try await publisher.publish("\(index)", to: channel) == 1) }
        let expected = (0..<100).map(String.init)
        try await withThrowingTaskGroup(of: [String].self) { group in
            for subscription in subscriptions { group.addTask { try await collect(subscription, 100).map(\.string) } }
            for try await received in group { #expect(received == expected) }
        }
        await subscriber.close()
        await publisher.close()
    }

    @Test func fanOutToFiveSubscribers() async throws {
        let configuration = try SharedServer.configuration
        let publisher = try await Publisher.connect(to: configuration)
        let channel = uniqueName("fan5")
        var subscribers: [Subscriber] = []
        var subscriptions: [Subscription] = []
        for _ in 0..<5 {
            let subscriber = try await Subscriber.connect(to: configuration)
            subscribers.append(subscriber)
            subscriptions.append(try await subscriber.subscribe(to: channel))
        }
        for index in 0..<100 { #expect(try await publisher.publish("\(index)", to: channel) == 5) }
        for subscription in subscriptions {
            #expect(try await collect(subscription, 100).map(\.string) == (0..<100).map(String.init))
        }
        for subscriber in subscribers { await subscriber.close() }
        await publisher.close()
    }

    @Test func referenceCountedChannels() async throws {
        let (subscriber, publisher) = try await pubSubPair()
        let channel = uniqueName("rc")
        let first = try await subscriber.subscribe(to: channel)
        let second = try await subscriber.subscribe(to: channel)
        let twiceInOneCall = try await subscriber.subscribe(to: channel, channel)
        try await publisher.publish("both", to: channel)
        #expect(try await collect(first, 1).map(\.string) == ["both"])
        #expect(try await collect(twiceInOneCall, 1).map(\.string) == ["both"])  // once, not twice
        await first.unsubscribe()
        await twiceInOneCall.unsubscribe()
        // `second` still receives, and the server still has the channel.
        #expect(try await publisher.publish("after", to: channel) == 1)
        #expect(try await collect(second, 2).map(\.string) == ["both", "after"])
        second.cancel()
        try await waitUntil { try await publisher.connection.pubsubNumberOfSubscribers([channel]) == [RedisName(channel): 0] }
        #expect(await subscriber.activeSubscriptionCount() == 0)
        await subscriber.close()
        await publisher.close()
    }

    @Test func aSubscriptionEndsWhenCancelledDroppedOrItsTaskIsCancelled() async throws {
        let (subscriber, publisher) = try await pubSubPair()
        func count(_ channel: String) async throws -> Int { try await publisher.connection.pubsubNumberOfSubscribers([channel])[RedisName(channel)] ?? -1 }

        let dropped = uniqueName("drop")
        do { _ = try await subscriber.subscribe(to: dropped) }
        try await waitUntil { try await count(dropped) == 0 }

        let cancelled = uniqueName("cancel")
        let subscription = try await subscriber.subscribe(to: cancelled)
        #expect(try await count(cancelled) == 1)
        subscription.cancel()
        try await waitUntil { try await count(cancelled) == 0 }

        let taskChannel = uniqueName("task")
        let taskSubscription = try await subscriber.subscribe(to: taskChannel)
        let consumer = Task { () -> Int in
            var received = 0
            for try await _ in taskSubscription { received += 1 }
            return received  // a cancelled consumer's loop ends normally
        }
        try await publisher.publish("one", to: taskChannel)
        try await Task.sleep(for: .milliseconds(100))
        consumer.cancel()
        #expect(try await consumer.value == 1)
        try await waitUntil { try await count(taskChannel) == 0 }
        #expect(await subscriber.activeSubscriptionCount() == 0)
        await subscriber.close()
        await publisher.close()
    }

    @Test func subscribeAndUnsubscribeWhileMessagesFlowLosesNothing() async throws {
        let (subscriber, publisher) = try await pubSubPair()
        let steady = uniqueName("steady")
        let subscription = try await subscriber.subscribe(to: steady)
        let total = 5_000
        // A generous bound: 5,000 publishes under a sanitizer, beside the rest of the suite, can take 20 s.
        let consumer = Task { try await collect(subscription, total, timeout: .seconds(90)).map(\.string) }
        let churn = Task {
            for round in 0..<300 {
                let other = try await subscriber.subscribe(to: steady + ":\(round % 7)", steady)
                if round % 2 == 0 { other.cancel() }  // the odd ones end when released
            }
        }
        for index in 0..<total { try await publisher.publish("\(index)", to: steady) }
        try await churn.value
        #expect(try await consumer.value == (0..<total).map(String.init))
        await subscriber.close()
        await publisher.close()
    }

    @Test(arguments: [BufferingPolicy.bufferingNewest(10), .bufferingOldest(10)])
    func slowConsumerDropsPerPolicyAndCountsIt(policy: BufferingPolicy) async throws {
        let (subscriber, publisher) = try await pubSubPair()
        let channel = uniqueName("slow")
        let slow = try await subscriber.subscribe(to: channel, bufferingPolicy: policy)
        let marker = try await subscriber.subscribe(to: channel + ":done")
        for index in 1...100 { try await publisher.publish("\(index)", to: channel) }
        try await publisher.publish("done", to: channel + ":done")
        _ = try await collect(marker, 1)  // one connection, in order: all 100 were routed before this
        let received = try await collect(slow, 10).map(\.string)
        #expect(received == (policy == .bufferingNewest(10) ? (91...100) : (1...10)).map(String.init))
        #expect(slow.droppedMessageCount == 90)
        await subscriber.close()
        await publisher.close()
    }

    @Test func tenThousandSubscribeUnsubscribeCyclesInterleavedWithPublishes() async throws {
        let (subscriber, publisher) = try await pubSubPair()
        let channel = uniqueName("cycle")
        let witness = try await subscriber.subscribe(to: channel + ":witness")
        for cycle in 0..<10_000 {
            let subscription = try await subscriber.subscribe(to: channel)
            try await publisher.publish("\(cycle)", to: channel)
            if cycle % 1000 == 0 {
                #expect(try await collect(subscription, 1).map(\.string) == ["\(cycle)"])
                try await publisher.publish("\(cycle)", to: channel + ":witness")
            } else {
                subscription.cancel()
            }
        }
        #expect(try await collect(witness, 10).map(\.string) == stride(from: 0, to: 10_000, by: 1000).map(String.init))
        try await waitUntil { try await publisher.connection.pubsubNumberOfSubscribers([channel]) == [RedisName(channel): 0] }
        witness.cancel()
        try await waitUntil { await subscriber.activeSubscriptionCount() == 0 }
        await subscriber.close()
        await publisher.close()
    }

    /// A payload that does not decode is an element, so `for try await` goes on past it (the old `next()` threw, and
    /// a loop could not continue).
    @Test func decodedMessagesAreResultsAndTheLoopGoesOnPastABadPayload() async throws {
        struct Event: Codable, Equatable { let id: Int }
        let (subscriber, publisher) = try await pubSubPair()
        let channel = uniqueName("json")
        let subscription = try await subscriber.subscribe(to: channel)
        try await publisher.publish(json: Event(id: 1), to: channel)
        try await publisher.publish("not json", to: channel)
        try await publisher.publish(json: Event(id: 2), to: channel)

        var events: [Event] = []
        var failures: [MessageDecodingError] = []
        for try await result in subscription.decoded(as: Event.self) {
            switch result {
            case .success(let event): events.append(event)
            case .failure(let error): failures.append(error)
            }
            if events.count + failures.count == 3 { break }
        }
        #expect(events == [Event(id: 1), Event(id: 2)])
        #expect(failures.map(\.message.string) == ["not json"])
        await subscriber.close()
        await publisher.close()
    }

    @Test func closeEndsEveryLoopNormallyAfterBufferedMessages() async throws {
        let (subscriber, publisher) = try await pubSubPair()
        let channel = uniqueName("close")
        let subscription = try await subscriber.subscribe(to: channel)
        try await publisher.publish("buffered", to: channel)
        try await waitUntil { try await publisher.publish("probe", to: channel + ":none") == 0 }
        try await Task.sleep(for: .milliseconds(100))
        await subscriber.close()
        var received: [String] = []
        for try await message in subscription { received.append(message.string) }
        #expect(received == ["buffered"])
        await #expect { _ = try await subscriber.subscribe(to: channel) } throws: { isRedisError($0, .connectionClosed) }
        await publisher.close()
    }

    @Test func withoutReconnectingAKilledConnectionFailsTheSubscriptionsLoop() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.reconnect = .disabled
        let subscriber = try await Subscriber.connect(to: configuration)
        let admin = try await RedisConnection.connect(to: .init(url: server.url))
        let subscription = try await subscriber.subscribe(to: "news")
        try await admin.send("CLIENT", "KILL", "TYPE", "pubsub")
        await #expect {
            for try await _ in subscription {}
        } throws: { isRedisError($0, .connectionClosed) }
        await admin.close()
    }

    @Test func aclRefusedChannelFailsThatSubscriptionOnly() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let admin = try await RedisConnection.connect(to: .init(url: server.url))
        try await admin.send("ACL", "SETUSER", "reader", "on", ">pw", "resetchannels", "&public:*", "+@pubsub", "+ping")
        let subscriber = try await Subscriber.connect(to: .init(url: "redis://reader:pw@127.0.0.1:\(server.port)"))
        await #expect { _ = try await subscriber.subscribe(to: "secret") } throws: { isRedisError($0, .permissionDenied) }
        await #expect { _ = try await subscriber.subscribe(to: "public:a", "secret") } throws: { isRedisError($0, .permissionDenied) }
        let allowed = try await subscriber.subscribe(to: "public:news")
        #expect(try await admin.publish("still here", to: "public:news") == 1)
        #expect(try await collect(allowed, 1).map(\.string) == ["still here"])
        #expect(try await admin.pubsubNumberOfSubscribers(["public:a"]) == ["public:a": 0])  // the failed call left nothing
        await subscriber.close()
        await admin.close()
    }

    @Test func interopWithRedisCLI() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let publisher = try await Publisher.connect(to: .init(url: server.url))
        let subscriber = try await Subscriber.connect(to: .init(url: server.url))
        let channel = "interop"
        // redis-cli's SUBSCRIBE sees our PUBLISH.
        let cli = try ExternalSubscriber(port: server.port, command: "SUBSCRIBE", channel: channel)
        defer { cli.stop() }
        try await waitUntil { try await publisher.connection.pubsubNumberOfSubscribers([channel]) == [RedisName(channel): 1] }
        try await publisher.publish("from swift", to: channel)
        try await waitUntil { cli.output.contains("from swift") }
        // redis-cli's PUBLISH reaches our Subscriber.
        let subscription = try await subscriber.subscribe(to: channel)
        let cliPublish = Process()
        cliPublish.executableURL = try RedisServer.find("redis-cli")
        cliPublish.arguments = ["-h", "127.0.0.1", "-p", "\(server.port)", "PUBLISH", channel, "from redis-cli"]
        cliPublish.standardOutput = FileHandle.nullDevice
        try cliPublish.run()
        await cliPublish.waitForExit()
        #expect(try await collect(subscription, 1).map(\.string) == ["from redis-cli"])
        await subscriber.close()
        await publisher.close()
    }
}

final class Counter: @unchecked Sendable {
    // @unchecked Sendable because: `count` is only touched under `lock`.
    private let lock = NSLock()
    private var count = 0
    func increment() { lock.lock(); count += 1; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return count }
}
