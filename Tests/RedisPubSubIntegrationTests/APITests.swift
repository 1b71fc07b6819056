import Foundation
@testable import RedisPubSub
import Testing

/// The public API does what each call says: the traps a new user hit (issue 10) each have a test here that failed on
/// the API before. What must not compile at all is checked by `scripts/check-api-shapes.sh`.
@Suite("Public API: payloads, names, reshaping, iteration, events")
struct APITests {
    // MARK: Payloads are bytes

    @Test func everyByteArrayExpressionPublishesBytes() async throws {
        let (subscriber, publisher) = try await pubSubPair()
        let channel = uniqueName("bytes")
        let subscription = try await subscriber.subscribe(to: channel)
        let text = "hi"
        try await publisher.publish(Array(text.utf8), to: channel)  // was JSON: [104,105]
        try await publisher.publish([0x00, 0xFF], to: channel)  // was JSON: [0,255]
        try await publisher.publish(Array(text.utf8)[1...], to: channel)
        try await publisher.publish(Data([0x01]), to: channel)
        try await publisher.publish(text.dropFirst(), to: channel)
        try await publisher.publish(json: 42, to: channel)  // JSON only when asked for
        try await publisher.publish(json: ["a": 1], to: channel)
        let payloads = try await collect(subscription, 7).map(\.payload)
        #expect(payloads == [Array("hi".utf8), [0x00, 0xFF], Array("i".utf8), [0x01], Array("i".utf8), Array("42".utf8), Array(#"{"a":1}"#.utf8)])
        await subscriber.close()
        await publisher.close()
    }

    @Test func aValueThatDoesNotEncodeIsAClearErrorAndNothingIsSent() async throws {
        struct Unencodable: Encodable {
            func encode(to encoder: any Encoder) throws { throw EncodingError.invalidValue(0, .init(codingPath: [], debugDescription: "no")) }
        }
        let (subscriber, publisher) = try await pubSubPair()
        let channel = uniqueName("json")
        let subscription = try await subscriber.subscribe(to: channel)
        await #expect { try await publisher.publish(json: Unencodable(), to: channel) } throws: {
            isRedisError($0, .invalidArgument) && "\($0)".contains("Unencodable")
        }
        try await publisher.publish("after", to: channel)
        #expect(try await collect(subscription, 1).map(\.string) == ["after"])  // the failed one never went out
        await subscriber.close()
        await publisher.close()
    }

    // MARK: Names are bytes, never integers

    @Test func anIntegerArrayLiteralIsOneBinaryChannelNotChannelsNamedByNumbers() async throws {
        let (subscriber, publisher) = try await pubSubPair()
        let subscription = try await subscriber.subscribe(to: [0x80, 0x81])  // was channels "128" and "129"
        let counts = try await publisher.connection.pubsubNumberOfSubscribers([RedisName(bytes: [0x80, 0x81]), "128", "129"])
        #expect(counts == [RedisName(bytes: [0x80, 0x81]): 1, "128": 0, "129": 0])
        #expect(subscription.channels == [RedisName(bytes: [0x80, 0x81])])
        try await publisher.publish("binary", to: [0x80, 0x81] as [UInt8])
        let message = try #require(try await collect(subscription, 1).first)
        #expect(message.channelBytes == [0x80, 0x81])
        await subscriber.close()
        await publisher.close()
    }

    @Test func introspectionKeepsBinaryNamesApart() async throws {
        let server = try RedisServer.start()  // its own: PUBSUB CHANNELS lists every channel of the server
        defer { server.stop() }
        let subscriber = try await Subscriber.connect(to: .init(url: server.url))
        let connection = try await RedisConnection.connect(to: .init(url: server.url))
        let subscription = try await subscriber.subscribe(channels: [[0x80] as [UInt8]], shardChannels: [[0xC3] as [UInt8]])
        // Both names decode to U+FFFD; the old [String: Int] collapsed them into one key and lost a count.
        let counts = try await connection.pubsubNumberOfSubscribers([[0x80] as [UInt8], [0x81] as [UInt8]])
        #expect(counts == [RedisName(bytes: [0x80]): 1, RedisName(bytes: [0x81]): 0])
        #expect(try await connection.pubsubChannels() == [RedisName(bytes: [0x80])])
        #expect(try await connection.pubsubShardChannels() == [RedisName(bytes: [0xC3])])
        #expect(try await connection.pubsubShardNumberOfSubscribers([[0xC3] as [UInt8]]) == [RedisName(bytes: [0xC3]): 1])
        #expect(RedisName(bytes: [0x6E, 0x80]).description == "n\\x80")
        #expect(RedisName(bytes: Array("é".utf8)) == "é")
        withExtendedLifetime(subscription) {}
        await subscriber.close()
        await connection.close()
    }

    // MARK: Inspecting and reshaping a subscription

    @Test func aLiveSubscriptionAddsAndRemovesNamesEachAwaitedUntilTheServerAcknowledged() async throws {
        let (subscriber, publisher) = try await pubSubPair()
        let a = uniqueName("a"), b = uniqueName("b"), p = uniqueName("p")
        let subscription = try await subscriber.subscribe(to: a)
        #expect(subscription.channels == [RedisName(a)])
        #expect(subscription.patterns.isEmpty)
        #expect(subscription.isSubscribed)

        try await subscription.add(channels: [b, a], patterns: [p + "*"])  // `a` is held already: skipped
        #expect(subscription.channels == [RedisName(a), RedisName(b)])
        #expect(subscription.patterns == [RedisName(p + "*")])
        #expect(subscription.isSubscribed)
        // Returned after the acknowledgement: a message published now is received, on every new name.
        #expect(try await publisher.publish("to b", to: b) == 1)
        #expect(try await publisher.publish("to p", to: p + "1") == 1)
        #expect(try await collect(subscription, 2).map(\.string) == ["to b", "to p"])

        await subscription.remove(channels: [a])
        #expect(try await publisher.publish("to a", to: a) == 0)  // returned after UNSUBSCRIBE's acknowledgement
        #expect(subscription.channels == [RedisName(b)])
        try await publisher.publish("to b again", to: b)
        #expect(try await collect(subscription, 1).map(\.string) == ["to b again"])
        #expect(!subscription.hasEnded)

        await subscription.unsubscribe()
        #expect(try await publisher.publish("to b", to: b) == 0)  // no waiting: unsubscribe() waited for the server
        #expect(subscription.hasEnded)
        #expect(!subscription.isSubscribed)
        await #expect { try await subscription.add(channels: [a]) } throws: { isRedisError($0, .invalidArgument) }
        #expect(try await subscriber.ping() >= .zero)
        await subscriber.close()
        await publisher.close()
    }

    @Test func aRefusedAdditionFailsAloneAndTheSubscriptionKeepsWhatItHad() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let admin = try await RedisConnection.connect(to: .init(url: server.url))
        try await admin.send("ACL", "SETUSER", "limited", "on", ">pw", "resetchannels", "&allowed*", "+@all")
        let subscriber = try await Subscriber.connect(to: .init(url: "redis://limited:pw@127.0.0.1:\(server.port)"))
        let subscription = try await subscriber.subscribe(to: "allowed:1")
        await #expect { try await subscription.add(channels: ["allowed:2", "forbidden"]) } throws: {
            isRedisError($0, .permissionDenied)
        }
        #expect(subscription.channels == ["allowed:1"])  // neither of the two was added
        #expect(!subscription.hasEnded)
        #expect(try await admin.pubsubNumberOfSubscribers(["allowed:1", "allowed:2"]) == ["allowed:1": 1, "allowed:2": 0])
        try await admin.publish("still here", to: "allowed:1")
        #expect(try await collect(subscription, 1).map(\.string) == ["still here"])
        await subscriber.close()
        await admin.close()
    }

    @Test func anAdditionWhileTheServerIsDownIsMadeAfterTheReconnect() async throws {
        var server = try RedisServer.start()
        let port = server.port
        var configuration = try RedisConfiguration(url: server.url)
        configuration.connectTimeout = .seconds(20)
        let subscriber = try await Subscriber.connect(to: configuration)
        let subscription = try await subscriber.subscribe(to: "a")
        let gaps = EventRecorder(subscription.events())
        server.stop()  // SIGKILL
        _ = try await gaps.disconnected()
        #expect(!subscription.isSubscribed)
        let adding = Task { try await subscription.add(channels: ["b"]) }  // waits for the reconnect
        // Registered while the server is down (a loaded run can take longer than a fixed sleep to get there).
        try await waitUntil { subscription.channels == ["a", "b"] }
        server = try RedisServer.start(port: port)
        defer { server.stop() }
        try await adding.value
        #expect(subscription.isSubscribed)
        let admin = try await RedisConnection.connect(to: configuration)
        #expect(try await admin.pubsubNumberOfSubscribers(["a", "b"]) == ["a": 1, "b": 1])
        await subscriber.close()
        await admin.close()
    }

    // MARK: Reshaping while the server is slow: every call waits for what it asked for

    /// A subscriber that waits long enough for anything here, on a server of its own.
    private func slowServerPair() async throws -> (RedisServer, Subscriber, RedisConnection) {
        let server = try RedisServer.start()
        var configuration = try RedisConfiguration(url: server.url)
        configuration.commandTimeout = .seconds(30)
        configuration.connectTimeout = .seconds(30)
        configuration.healthCheckInterval = nil
        return (server, try await Subscriber.connect(to: configuration), try await RedisConnection.connect(to: configuration))
    }

    @Test func aSecondAddOfANameNotYetConfirmedWaitsForItAndIsSubscribedTurnsFalseMeanwhile() async throws {
        let (server, subscriber, admin) = try await slowServerPair()
        defer { server.stop() }
        let subscription = try await subscriber.subscribe(to: "a")
        server.pause()
        let first = Task { try await subscription.add(channels: ["x"]) }
        try await waitUntil { subscription.channels == ["a", "x"] }
        let second = Task { () throws(RedisError) -> ContinuousClock.Instant in
            try await subscription.add(channels: ["x"])
            return .now
        }
        try await Task.sleep(for: .milliseconds(300))
        #expect(!subscription.isSubscribed)  // x is not confirmed
        let resumed = ContinuousClock.now
        server.resume()
        try await first.value
        #expect(try await second.value >= resumed)  // it did not return before the server confirmed x
        #expect(subscription.isSubscribed)
        #expect(try await admin.publish("to x", to: "x") == 1)
        await subscriber.close()
        await admin.close()
    }

    @Test func aCancelledAddIsUndoneOnceTheServerAnswers() async throws {
        let (server, subscriber, admin) = try await slowServerPair()
        defer { server.stop() }
        let subscription = try await subscriber.subscribe(to: "a")
        server.pause()
        let adding = Task { try await subscription.add(channels: ["x"]) }
        try await waitUntil { subscription.channels == ["a", "x"] }  // registered: the cancel has something to undo
        adding.cancel()
        await #expect { try await adding.value } throws: { isRedisError($0, .cancelled) }
        server.resume()
        try await waitUntil { subscription.channels == ["a"] }
        try await waitUntil { try await admin.pubsubNumberOfSubscribers(["x"]) == ["x": 0] }
        #expect(subscription.isSubscribed)
        await subscriber.close()
        await admin.close()
    }

    @Test func aRetriedAddAfterACancelledOneKeepsTheName() async throws {
        let (server, subscriber, admin) = try await slowServerPair()
        defer { server.stop() }
        let subscription = try await subscriber.subscribe(to: "a")
        server.pause()
        let cancelled = Task { try await subscription.add(channels: ["b"]) }
        try await waitUntil { subscription.channels == ["a", "b"] }
        cancelled.cancel()
        await #expect { try await cancelled.value } throws: { isRedisError($0, .cancelled) }
        let retried = Task { try await subscription.add(channels: ["b"]) }  // waits for the same SUBSCRIBE
        try await Task.sleep(for: .milliseconds(100))
        server.resume()
        try await retried.value
        #expect(subscription.channels == ["a", "b"])  // undoing the cancelled one did not take b from the retry
        #expect(try await admin.pubsubNumberOfSubscribers(["b"]) == ["b": 1])
        #expect(subscription.isSubscribed)
        await subscriber.close()
        await admin.close()
    }

    @Test func aSubscriptionThatRemovedEveryNameStillEndsOnClose() async throws {
        let (subscriber, publisher) = try await pubSubPair()
        let subscription = try await subscriber.subscribe(to: uniqueName("all-removed"))
        await subscription.remove(channels: subscription.channels)
        #expect(subscription.channels.isEmpty && !subscription.hasEnded)
        let reader = Task { () -> Void in
            for try await _ in subscription {}
        }
        try await Task.sleep(for: .milliseconds(50))
        await subscriber.close()
        #expect(await finishes(Task { _ = await reader.result }))  // the loop ended, it did not wait forever
        #expect(subscription.hasEnded)
        await publisher.close()
    }

    @Test func aNameRemovedWhileItsAdditionIsInFlightStaysRemovedAcrossAReconnect() async throws {
        var (server, subscriber, _) = try await slowServerPair()
        let port = server.port
        let subscription = try await subscriber.subscribe(to: "a")
        server.pause()
        let adding = Task { try await subscription.add(channels: ["x", "y"]) }
        try await waitUntil { subscription.channels == ["a", "x", "y"] }  // the SUBSCRIBEs are written
        let removing = Task { await subscription.remove(channels: ["x"]) }
        try await waitUntil { subscription.channels == ["a", "y"] }
        try await Task.sleep(for: .milliseconds(50))  // the UNSUBSCRIBE reaches the (frozen) server's socket
        server.stop()  // SIGKILL: the SUBSCRIBE and UNSUBSCRIBE were never answered
        server = try RedisServer.start(port: port)
        defer { server.stop() }
        try await adding.value  // made again after the reconnect, without x
        await removing.value
        let admin = try await RedisConnection.connect(to: .init(url: server.url))
        try await waitUntil { try await admin.pubsubNumberOfSubscribers(["a", "x", "y"]) == ["a": 1, "x": 0, "y": 1] }
        #expect(subscription.channels == ["a", "y"])
        #expect(subscription.isSubscribed)
        await subscription.unsubscribe()
        #expect(try await admin.pubsubNumberOfSubscribers(["a", "x", "y"]) == ["a": 0, "x": 0, "y": 0])
        await subscriber.close()
        await admin.close()
    }

    @Test func unsubscribeAfterCancelStillWaitsForTheServer() async throws {
        let (subscriber, publisher) = try await pubSubPair()
        let channel = uniqueName("cancel-then-wait")
        for _ in 0..<20 {
            let subscription = try await subscriber.subscribe(to: channel)
            subscription.cancel()
            await subscription.unsubscribe()  // the ending had begun: this waits for it to finish
            #expect(try await publisher.publish("gone", to: channel) == 0)
        }
        await subscriber.close()
        await publisher.close()
    }

    // MARK: Iteration

    @Test func aSecondConcurrentIteratorFailsLoudlyAndADroppedOneKeepsTheSubscription() async throws {
        let (subscriber, publisher) = try await pubSubPair()
        let channel = uniqueName("one-reader")
        let subscription = try await subscriber.subscribe(to: channel)
        for text in ["a", "b", "c"] { try await publisher.publish(text, to: channel) }
        do {
            var first = subscription.makeAsyncIterator()
            var second = subscription.makeAsyncIterator()
            #expect(try await first.next()?.string == "a")
            await #expect { _ = try await second.next() } throws: { isRedisError($0, .invalidArgument) }  // was nil
        }
        // first(where:) makes and drops its own iterator: the subscription and the unread "c" stay.
        #expect(try await subscription.first { $0.string == "b" }?.string == "b")
        #expect(!subscription.hasEnded)
        #expect(try await subscription.nextMessage(timeout: .seconds(10))?.string == "c")
        #expect(try await subscriber.subscribe(to: channel).isSubscribed)
        #expect(try await publisher.connection.pubsubNumberOfSubscribers([channel]) == [RedisName(channel): 1])
        await subscriber.close()
        await publisher.close()
    }

    @Test func aReadWithATimeoutReturnsNilAndKeepsTheSubscription() async throws {
        let (subscriber, publisher) = try await pubSubPair()
        let channel = uniqueName("timeout")
        let subscription = try await subscriber.subscribe(to: channel)
        let start = ContinuousClock.now
        #expect(try await subscription.nextMessage(timeout: .milliseconds(100)) == nil)
        #expect(ContinuousClock.now - start >= .milliseconds(100))
        #expect(!subscription.hasEnded)
        let late = Task {
            try await Task.sleep(for: .milliseconds(100))
            try await publisher.publish("late", to: channel)
        }
        #expect(try await subscription.nextMessage(timeout: .seconds(20))?.string == "late")
        try await late.value
        subscription.cancel()
        #expect(try await subscription.nextMessage(timeout: .seconds(20)) == nil)  // ended: at once
        #expect(subscription.hasEnded)
        await subscriber.close()
        await publisher.close()
    }

    @Test func theScopedFormUnsubscribesWhenTheBodyReturnsOrThrows() async throws {
        let (subscriber, publisher) = try await pubSubPair()
        let channel = uniqueName("scoped")
        let received = try await subscriber.subscribe(to: channel) { subscription in
            try await publisher.publish("inside", to: channel)
            return try await subscription.nextMessage(timeout: .seconds(20))?.string
        }
        #expect(received == "inside")
        #expect(try await publisher.publish("after", to: channel) == 0)  // no waiting: the form waited
        struct Failure: Error {}
        await #expect(throws: Failure.self) {
            try await subscriber.subscribe(channels: [channel], patterns: [channel + "*"]) { _ in throw Failure() }
        }
        #expect(try await publisher.publish("after", to: channel) == 0)
        #expect(try await publisher.publish("after", to: channel + "-matching") == 0)  // the pattern went too
        await subscriber.close()
        await publisher.close()
    }

    // MARK: Events start where things stand

    @Test func aLateEventReaderLearnsTheCurrentStateFirst() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let subscriber = try await Subscriber.connect(to: .init(url: server.url))
        let admin = try await RedisConnection.connect(to: .init(url: server.url))
        let subscription = try await subscriber.subscribe(to: "a")
        var early = subscription.events().makeAsyncIterator()
        guard case .subscribed = await early.next() else { Issue.record("no subscribed event first"); return }
        guard case .connected = await admin.events().first(where: { _ in true }) else {
            Issue.record("no connected event first")
            return
        }
        let gaps = EventRecorder(subscription.events())
        try await admin.send("CLIENT", "KILL", "TYPE", "pubsub")
        _ = try await gaps.resubscribed()
        // A reader that comes after the gap still learns of it: the replayed event is the resubscription.
        guard case .resubscribed = await subscription.events().first(where: { _ in true }) else {
            Issue.record("a late reader missed the resubscription")
            return
        }
        guard case .reconnected = await subscriber.events().first(where: { _ in true }) else {
            Issue.record("a late reader missed the reconnect")
            return
        }
        await subscriber.close()
        await admin.close()
    }

    // MARK: One operation, one name; every error a RedisError

    @Test func transactionsPublishAndSharedMULTIIsRefused() async throws {
        let (subscriber, publisher) = try await pubSubPair()
        let channel = uniqueName("tx")
        let subscription = try await subscriber.subscribe(to: channel)
        let replies = try await publisher.connection.transaction([["PUBLISH", RedisArgument(channel), "in a transaction"]])
        #expect(replies == [.integer(1)])
        #expect(try await collect(subscription, 1).map(\.string) == ["in a transaction"])
        await #expect { try await publisher.connection.send("MULTI") } throws: { isRedisError($0, .invalidArgument) }
        await subscriber.close()
        await publisher.close()
    }

    @Test func errorsAreTypedRedisErrorsAndCancellationIsOneOfTheirCodes() async throws {
        let (subscriber, publisher) = try await pubSubPair()
        let task = Task { () async -> RedisError.Code? in
            withUnsafeCurrentTask { $0?.cancel() }
            do throws(RedisError) {
                try await publisher.publish("never sent", to: uniqueName("cancelled"))
                return nil
            } catch {
                return error.code  // `error` is a RedisError: no cast
            }
        }
        #expect(await task.value == .cancelled)
        await subscriber.close()
        await publisher.close()
    }
}
