import Foundation
@testable import RedisPubSub
import Testing

/// `StreamConsumer`: consumer groups read at least once, with the failure cases handled (issue 13).
@Suite("Streams: consumer groups")
struct StreamConsumerTests {
    /// Short times, so the reclaim and lease paths run within a test.
    static func quick(
        prefetch: Int = 16, claimIdle: Duration? = .milliseconds(600), maxDeliveries: Int? = 10
    ) -> StreamConsumer.Options {
        StreamConsumer.Options(
            prefetch: prefetch, start: .beginning, claimIdle: claimIdle, claimInterval: .milliseconds(100),
            maxDeliveries: maxDeliveries, blockTimeout: .milliseconds(200))
    }

    /// The group's pending count (`XPENDING s g` summary).
    static func pendingCount(_ connection: RedisConnection, _ stream: String, _ group: String) async throws -> Int {
        try #require(try await connection.send("XPENDING", stream, group).array?.first?.int)
    }

    /// Reads `count` messages within `timeout`, handing each to `body`; fails the test (returning what it got) when
    /// fewer arrive.
    static func take(
        _ consumer: StreamConsumer, _ count: Int, timeout: Duration = .seconds(20),
        sourceLocation: SourceLocation = #_sourceLocation,
        _ body: @escaping @Sendable (StreamMessage) async -> Void = { $0.ack() }
    ) async throws -> [StreamMessage] {
        let got = Locked<[StreamMessage]>([])
        let finished = await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                do {
                    var iterator = consumer.makeAsyncIterator()
                    while got.withLock({ $0.count }) < count, let message = try await iterator.next() {
                        got.withLock { $0.append(message) }
                        await body(message)
                    }
                } catch {
                    Issue.record("the consumer failed: \(error)", sourceLocation: sourceLocation)
                }
                return true
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
        let messages = got.withLock { $0 }
        if !finished || messages.count < count {
            Issue.record(
                "got \(messages.count) of \(count) stream messages", sourceLocation: sourceLocation)
        }
        return messages
    }

    @Test func entriesAreDeliveredWithTheirFieldsAndAcknowledged() async throws {
        let publisher = try await Publisher.connect(to: SharedServer.configuration)
        let stream = uniqueName("orders")
        let ids = try await publisher.append(contentsOf: (0..<100).map { "order \($0)" }, to: stream)
        try await publisher.connection.send("XADD", stream, "*", "kind", "raw", "n", "7")
        let consumer = try await StreamConsumer.connect(
            to: SharedServer.configuration, streams: [RedisName(stream)], group: "billing", consumer: "w1",
            options: Self.quick())
        let messages = try await Self.take(consumer, 101)
        let payloads = messages.prefix(100).map(\.string)
        #expect(payloads == (0..<100).map { "order \($0)" })
        #expect(messages.prefix(100).map(\.id) == ids)
        let counts = Set(messages.map(\.deliveryCount))
        #expect(counts == [1])
        let raw = try #require(messages.last)
        #expect(raw.payload.isEmpty && raw.field("n") == Array("7".utf8))
        #expect(raw.fields.map(\.name) == ["kind", "n"])
        #expect(String(describing: raw).contains("kind=\"raw\""))
        #expect(raw.stream == RedisName(stream))
        try await waitUntil { try await Self.pendingCount(publisher.connection, stream, "billing") == 0 }
        await consumer.close()
        await publisher.close()
    }

    @Test func aStalledConsumerHoldsNoMoreThanItsPrefetch() async throws {
        let publisher = try await Publisher.connect(to: SharedServer.configuration)
        let stream = uniqueName("prefetch")
        _ = try await publisher.append(contentsOf: (0..<50).map { "\($0)" }, to: stream)
        let consumer = try await StreamConsumer.connect(
            to: SharedServer.configuration, streams: [RedisName(stream)], group: "g", consumer: "slow",
            options: Self.quick(prefetch: 5))
        // Nobody reads: the consumer fills its prefetch and stops.
        try await waitUntil { consumer.heldCount == 5 }
        try await Task.sleep(for: .milliseconds(500))
        #expect(consumer.heldCount == 5)
        #expect(try await Self.pendingCount(publisher.connection, stream, "g") == 5)
        // Acknowledging frees room, one for one.
        let first = try await Self.take(consumer, 2)
        try await waitUntil { try await Self.pendingCount(publisher.connection, stream, "g") == 5 }
        #expect(first.map(\.string) == ["0", "1"])
        let rest = try await Self.take(consumer, 48)
        #expect(rest.map(\.string) == (2..<50).map { "\($0)" })
        await consumer.close()
        await publisher.close()
    }

    @Test func aRestartedConsumerFirstTakesUpItsOwnPendingEntries() async throws {
        let publisher = try await Publisher.connect(to: SharedServer.configuration)
        let stream = uniqueName("restart")
        _ = try await publisher.append(contentsOf: (0..<5).map { "\($0)" }, to: stream)
        // A first process reads three entries and dies without acknowledging them (no reclaiming: they stay its own).
        let first = try await StreamConsumer.connect(
            to: SharedServer.configuration, streams: [RedisName(stream)], group: "g", consumer: "w",
            options: Self.quick(prefetch: 3, claimIdle: nil))
        let unacknowledged = try await Self.take(first, 3) { _ in }
        #expect(unacknowledged.map(\.string) == ["0", "1", "2"])
        await first.close()
        _ = try await publisher.append(contentsOf: ["5", "6"], to: stream)
        // The same name again: its three come first, delivered a second time, then the rest in order.
        let second = try await StreamConsumer.connect(
            to: SharedServer.configuration, streams: [RedisName(stream)], group: "g", consumer: "w",
            options: Self.quick(prefetch: 3, claimIdle: nil))
        let messages = try await Self.take(second, 7)
        #expect(messages.map(\.string) == ["0", "1", "2", "3", "4", "5", "6"])
        #expect(messages.map(\.deliveryCount) == [2, 2, 2, 1, 1, 1, 1])
        try await waitUntil { try await Self.pendingCount(publisher.connection, stream, "g") == 0 }
        await second.close()
        await publisher.close()
    }

    @Test func entriesOfADeadConsumerAreReclaimed() async throws {
        let publisher = try await Publisher.connect(to: SharedServer.configuration)
        let connection = publisher.connection
        let stream = uniqueName("reclaim")
        try await connection.send("XGROUP", "CREATE", stream, "g", "0", "MKSTREAM")
        _ = try await publisher.append(contentsOf: (0..<5).map { "\($0)" }, to: stream)
        // A consumer that read five entries and vanished.
        try await connection.send("XREADGROUP", "GROUP", "g", "dead", "COUNT", 5, "STREAMS", stream, ">")
        let consumer = try await StreamConsumer.connect(
            to: SharedServer.configuration, streams: [RedisName(stream)], group: "g", consumer: "alive",
            options: Self.quick(claimIdle: .milliseconds(300)))
        let events = EventRecorder(consumer.events())
        let messages = try await Self.take(consumer, 5)
        #expect(messages.map(\.string) == ["0", "1", "2", "3", "4"])
        #expect(messages.allSatisfy { $0.deliveryCount == 2 })
        let claimed = await events.next { if case .claimed = $0 { true } else { false } }
        guard case .claimed(let name, let ids, let from)? = claimed else {
            Issue.record("no claimed event: \(events.all)")
            return
        }
        #expect(name == RedisName(stream) && ids == messages.map(\.id) && from == ["dead"])
        try await waitUntil { try await Self.pendingCount(connection, stream, "g") == 0 }
        await consumer.close()
        await publisher.close()
    }

    @Test func aHandlerRunningThreeTimesClaimIdleIsNotDeliveredTwice() async throws {
        let publisher = try await Publisher.connect(to: SharedServer.configuration)
        let stream = uniqueName("lease")
        // 1.5 s: renewed every 0.5 s, so a loaded machine (a sanitizer build running other suites) that delays one
        // renewal by up to a second still keeps the lease.
        let options = Self.quick(claimIdle: .milliseconds(1500))
        let slow = try await StreamConsumer.connect(
            to: SharedServer.configuration, streams: [RedisName(stream)], group: "g", consumer: "slow", options: options)
        _ = try await publisher.append("long job", to: stream)
        var iterator = slow.makeAsyncIterator()
        let message = try #require(try await iterator.next())
        // Another consumer of the group, reclaiming every 100 ms whatever is idle 500 ms.
        let other = try await StreamConsumer.connect(
            to: SharedServer.configuration, streams: [RedisName(stream)], group: "g", consumer: "other", options: options)
        let otherGot = Locked<[String]>([])
        let reading = Task {
            for try await message in other {
                otherGot.withLock { $0.append(message.string) }
                message.ack()
            }
        }
        try await Task.sleep(for: .milliseconds(4500))  // three times claimIdle
        message.ack()
        try await waitUntil { try await Self.pendingCount(publisher.connection, stream, "g") == 0 }
        let stolen = otherGot.withLock { $0 }
        #expect(stolen.isEmpty, "delivered again to another consumer: \(stolen)")
        reading.cancel()
        await slow.close()
        await other.close()
        await publisher.close()
    }

    @Test func aPoisonEntryReachesTheDeadLetterStreamAfterMaxDeliveries() async throws {
        let publisher = try await Publisher.connect(to: SharedServer.configuration)
        let stream = uniqueName("poison")
        let consumer = try await StreamConsumer.connect(
            to: SharedServer.configuration, streams: [RedisName(stream)], group: "g", consumer: "w",
            // 1 s: a failed entry is released at once (its idle time set to claimIdle), so this costs no waiting, and a
            // loaded machine that is slow to hand an entry to its handler does not let its lease lapse (a reclaim of an
            // entry still held counts a delivery the handler never saw).
            options: Self.quick(claimIdle: .seconds(1), maxDeliveries: 3))
        let events = EventRecorder(consumer.events())
        let id = try await publisher.append("poison", to: stream)
        _ = try await publisher.append("fine", to: stream)
        // The handler fails the poison entry every time; it comes back until its third delivery, then moves.
        let seen = Locked<[(String, Int)]>([])
        let reading = Task {
            for try await message in consumer {
                seen.withLock { $0.append((message.string, message.deliveryCount)) }
                if message.string == "poison" { message.fail() } else { message.ack() }
            }
        }
        let moved = await events.next { if case .deadLettered = $0 { true } else { false } }
        reading.cancel()
        let poisonCounts = seen.withLock { $0 }.filter { $0.0 == "poison" }.map(\.1)
        let fineCount = seen.withLock { $0 }.filter { $0.0 == "fine" }.count
        #expect(fineCount == 1)
        // Each delivery counted, the first one first; usually [1, 2, 3]. A reclaim that races the re-read of the own
        // pending list can count a delivery the handler never sees (a known limit), so the count may skip one.
        #expect(poisonCounts.first == 1 && poisonCounts == poisonCounts.sorted() && Set(poisonCounts).count == poisonCounts.count)
        #expect(poisonCounts.count >= 2 && (poisonCounts.last ?? 0) <= 3, "\(poisonCounts)")
        guard case .deadLettered(let from, let original, let count, let target, let newID)? = moved else {
            Issue.record("no dead-letter event: \(events.all)")
            return
        }
        #expect(from == RedisName(stream) && original == id && count == 4 && target == RedisName("\(stream):dead-letter"))
        let letter = try await publisher.connection.send("XRANGE", "\(stream):dead-letter", "-", "+")
        let entry = try #require(letter.array?.first?.array)
        #expect(entry[0].string == newID.description)
        let fields = try #require(entry[1].array).compactMap(\.string)
        #expect(fields.prefix(8) == ["payload", "poison", "original-stream", stream, "original-id", id.description, "delivery-count", "4"])
        try await waitUntil { try await Self.pendingCount(publisher.connection, stream, "g") == 0 }
        await consumer.close()
        await publisher.close()
    }

    @Test func aDeadLetterThatCannotBeWrittenLeavesTheEntryPendingUntilItCan() async throws {
        let publisher = try await Publisher.connect(to: SharedServer.configuration)
        let connection = publisher.connection
        let stream = uniqueName("unwritable")
        try await connection.send("SET", "\(stream):dead-letter", "not a stream")  // XADD to it fails: WRONGTYPE
        let consumer = try await StreamConsumer.connect(
            to: SharedServer.configuration, streams: [RedisName(stream)], group: "g", consumer: "w",
            options: Self.quick(claimIdle: .milliseconds(200), maxDeliveries: 1))
        let events = EventRecorder(consumer.events())
        let reading = Task {
            for try await message in consumer { message.fail() }
        }
        _ = try await publisher.append("poison", to: stream)
        let failed = await events.next { if case .failed = $0 { true } else { false } }
        #expect(failed != nil, "\(events.all)")
        // Not acknowledged: still pending, not lost.
        #expect(try await Self.pendingCount(connection, stream, "g") == 1)
        try await connection.send("DEL", "\(stream):dead-letter")
        let moved = await events.next { if case .deadLettered = $0 { true } else { false } }
        #expect(moved != nil, "\(events.all)")
        try await waitUntil { try await Self.pendingCount(connection, stream, "g") == 0 }
        #expect(try await connection.send("XLEN", "\(stream):dead-letter").int == 1)
        reading.cancel()
        await consumer.close()
        await publisher.close()
    }

    @Test func aMessageLetGoWithoutAckOrFailFreesItsRoom() async throws {
        let publisher = try await Publisher.connect(to: SharedServer.configuration)
        let stream = uniqueName("let-go")
        _ = try await publisher.append(contentsOf: ["a", "b"], to: stream)
        let consumer = try await StreamConsumer.connect(
            to: SharedServer.configuration, streams: [RedisName(stream)], group: "g", consumer: "w",
            options: Self.quick(prefetch: 1, claimIdle: nil))
        do {
            var iterator = consumer.makeAsyncIterator()
            let first = try await iterator.next()
            #expect(first?.string == "a")
        }  // the loop is left (a break, a throw) with "a" neither acknowledged nor failed: it counts as failed
        let next = try await Self.take(consumer, 1)
        #expect(next.map(\.string) == ["b"])  // with the prefetch of 1 still taken by "a", this would wait for ever
        try await waitUntil { try await Self.pendingCount(publisher.connection, stream, "g") == 1 }  // "a" is pending
        await consumer.close()
        await publisher.close()
    }

    @Test func aConnectionClosedForGoodEndsTheLoopWithItsError() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.reconnect = .disabled
        let consumer = try await StreamConsumer.connect(
            to: configuration, streams: ["s"], group: "g", consumer: "w", options: Self.quick())
        let ended = Task { () -> RedisError? in
            do {
                for try await message in consumer { message.ack() }
                return nil
            } catch {
                return error as? RedisError ?? RedisError(.invalidArgument, "not a RedisError: \(error)")
            }
        }
        try await Task.sleep(for: .milliseconds(200))
        server.stop()
        let outcome = await withTaskGroup(of: RedisError??.self) { group in
            group.addTask { await ended.value }
            group.addTask {
                try? await Task.sleep(for: .seconds(20))
                ended.cancel()  // else the group would wait for it for ever
                return .none
            }
            let first = await group.next() ?? .none
            group.cancelAll()
            return first
        }
        guard case .some(let error) = outcome else {
            Issue.record("the loop did not end within 20 s")
            return
        }
        #expect(error?.code == .connectionClosed, "\(String(describing: error))")
        await consumer.close()
    }

    @Test func pendingEntriesTrimmedAwayAreReportedAsLost() async throws {
        let publisher = try await Publisher.connect(to: SharedServer.configuration)
        let connection = publisher.connection
        let stream = uniqueName("trimmed")
        try await connection.send("XGROUP", "CREATE", stream, "g", "0", "MKSTREAM")
        let ids = try await publisher.append(contentsOf: (0..<8).map { "\($0)" }, to: stream)
        // A dead consumer held five, this consumer's earlier life held three; then the stream was trimmed to nothing.
        try await connection.send("XREADGROUP", "GROUP", "g", "dead", "COUNT", 5, "STREAMS", stream, ">")
        try await connection.send("XREADGROUP", "GROUP", "g", "w", "COUNT", 3, "STREAMS", stream, ">")
        try await connection.send("XTRIM", stream, "MAXLEN", 0)
        _ = try await publisher.append("after the trim", to: stream)
        let consumer = try await StreamConsumer.connect(
            to: SharedServer.configuration, streams: [RedisName(stream)], group: "g", consumer: "w",
            options: Self.quick(claimIdle: .milliseconds(200)))
        let events = EventRecorder(consumer.events())
        let messages = try await Self.take(consumer, 1)
        #expect(messages.map(\.string) == ["after the trim"])
        var lost: [StreamEntryID] = []
        while lost.count < 8, let event = await events.next(where: { if case .lost = $0 { true } else { false } }) {
            if case .lost(_, let some) = event { lost += some }
        }
        let expected = ids
        #expect(lost.sorted() == expected)
        try await waitUntil { try await Self.pendingCount(connection, stream, "g") == 0 }
        await consumer.close()
        await publisher.close()
    }

    @Test func aDeletedStreamIsReportedOnceAndConsumingResumesWhenItIsBack() async throws {
        let publisher = try await Publisher.connect(to: SharedServer.configuration)
        let stream = uniqueName("deleted")
        var options = Self.quick()
        options.start = .newEntries
        let consumer = try await StreamConsumer.connect(
            to: SharedServer.configuration, streams: [RedisName(stream)], group: "g", consumer: "w", options: options)
        let events = EventRecorder(consumer.events())
        _ = try await publisher.append("before", to: stream)
        #expect(try await Self.take(consumer, 1).map(\.string) == ["before"])
        // The stream is deleted and appended to again at once: the group is gone, "after" is there before the
        // consumer notices, so only a group created again from the first entry delivers it.
        _ = try await publisher.connection.transaction([["DEL", RedisArgument(stream)], ["XADD", RedisArgument(stream), "*", "payload", "after"]])
        let missing = await events.next { if case .groupMissing = $0 { true } else { false } }
        #expect(missing == .groupMissing(stream: RedisName(stream)))
        let created = await events.next { if case .groupCreated = $0 { true } else { false } }
        #expect(created == .groupCreated(stream: RedisName(stream)))
        #expect(try await Self.take(consumer, 1).map(\.string) == ["after"])
        let all = events.all
        let missingCount = all.filter { if case .groupMissing = $0 { true } else { false } }.count
        #expect(missingCount == 1)
        await consumer.close()
        await publisher.close()
    }

    @Test func aServerRestartWithAppendOnlyLosesNothing() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(uniqueName("aof"))
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let arguments = ["--appendonly", "yes", "--appendfsync", "always", "--dir", directory.path]
        var server = try RedisServer.start(arguments)
        let port = server.port
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.connectTimeout = .seconds(5)
        let publisher = try await Publisher.connect(to: configuration, retry: .whileReconnecting(upTo: .seconds(10)))
        // No reclaiming: what a kill cuts off comes back only because the consumer re-reads its own pending entries.
        let consumer = try await StreamConsumer.connect(
            to: configuration, streams: ["jobs"], group: "g", consumer: "w", options: Self.quick(claimIdle: nil))
        let events = EventRecorder(consumer.events())
        let seen = Locked<[String]>([])
        let reading = Task {
            for try await message in consumer {
                seen.withLock { $0.append(message.string) }
                message.ack()
            }
        }
        var appended: [String] = []
        for round in 0..<3 {
            for index in 0..<20 {
                let text = "r\(round)-\(index)"
                _ = try await publisher.append(text, to: "jobs")
                appended.append(text)
            }
            server.stop()  // SIGKILL
            let lost = await events.next { if case .disconnected = $0 { true } else { false } }
            #expect(lost != nil, "\(events.all)")
            server = try RedisServer.start(arguments, port: port)
            let back = await events.next { if case .reconnected = $0 { true } else { false } }
            #expect(back != nil, "\(events.all)")
        }
        try await waitUntil(timeout: .seconds(20)) { Set(seen.withLock { $0 }).isSuperset(of: appended) }
        let got = seen.withLock { $0 }
        #expect(Set(got) == Set(appended), "missing \(Set(appended).subtracting(got).sorted())")
        // Duplicates only of entries whose acknowledgement a kill cut off: at most the prefetch per kill.
        #expect(got.count - Set(got).count <= 3 * 16)
        reading.cancel()
        await consumer.close()
        await publisher.close()
    }

    @Test func aReconnectInTheMiddleOfABatchOfAcknowledgementsLosesNoneAndRepeatsOnlyTheUnconfirmed() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let configuration = try RedisConfiguration(url: server.url)
        let admin = try await RedisConnection.connect(to: configuration)
        let publisher = try await Publisher.connect(to: configuration, retry: .whileReconnecting(upTo: .seconds(10)))
        _ = try await publisher.append(contentsOf: (0..<20).map { "\($0)" }, to: "jobs")
        // No reclaiming: only the consumer's own re-read after the reconnect can deliver anything again.
        let consumer = try await StreamConsumer.connect(
            to: configuration, streams: ["jobs"], group: "g", consumer: "w", options: Self.quick(prefetch: 20, claimIdle: nil))
        let events = EventRecorder(consumer.events())
        let batch = try await Self.take(consumer, 20) { _ in }  // held, not acknowledged
        for message in batch.prefix(10) { message.ack() }
        try await waitUntil { try await Self.pendingCount(admin, "jobs", "g") == 10 }  // the first half confirmed
        // Both of the consumer's connections cut, and the second half acknowledged while they reconnect.
        _ = try await admin.send("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        for message in batch.suffix(10) { message.ack() }
        try await waitUntil(timeout: .seconds(15)) { try await Self.pendingCount(admin, "jobs", "g") == 0 }
        _ = try await publisher.append(contentsOf: (20..<25).map { "\($0)" }, to: "jobs")
        // What follows: any of the second half re-read before its acknowledgement landed (delivered again, acked by
        // take), then the five new ones, each once. Nothing of the confirmed first half comes back.
        var after: [StreamMessage] = []
        while after.filter({ Int($0.string)! >= 20 }).count < 5 {
            let next = try await Self.take(consumer, 1)
            guard let message = next.first else { break }
            after.append(message)
        }
        let again = after.map(\.string).filter { Int($0)! < 20 }
        #expect(again.allSatisfy { Int($0)! >= 10 }, "\(again)")
        #expect(after.map(\.string).filter { Int($0)! >= 20 } == (20..<25).map { "\($0)" })
        try await waitUntil { try await Self.pendingCount(admin, "jobs", "g") == 0 }
        let disconnected = events.all.contains { if case .disconnected = $0 { true } else { false } }
        #expect(disconnected, "\(events.all)")
        await consumer.close()
        await publisher.close()
        await admin.close()
    }

    @Test func idleConsumersWithNothingPendingAreRemovedAndOneWithPendingEntriesOnlyOnceTheyAreReclaimed() async throws {
        let admin = try await SharedServer.connect()
        let stream = uniqueName("consumers")
        try await admin.send("XGROUP", "CREATE", stream, "g", "0", "MKSTREAM")
        try await admin.send("XADD", stream, "*", "payload", "a")
        try await admin.send("XADD", stream, "*", "payload", "b")
        try await admin.send("XGROUP", "CREATECONSUMER", stream, "g", "retired")  // nothing pending
        try await admin.send("XREADGROUP", "GROUP", "g", "crashed", "COUNT", 2, "STREAMS", stream, ">")  // two pending
        var options = Self.quick(claimIdle: .milliseconds(600))
        options.removeIdleConsumersAfter = .milliseconds(300)
        let consumer = try await StreamConsumer.connect(
            to: SharedServer.configuration, streams: [RedisName(stream)], group: "g", consumer: "w", options: options)
        let events = EventRecorder(consumer.events())
        func consumers() async throws -> [String] {
            try await admin.send("XINFO", "CONSUMERS", stream, "g").array?.compactMap { $0.array?[1].string } ?? []
        }
        let taken = try await Self.take(consumer, 2)  // crashed's two, reclaimed
        #expect(taken.map(\.string) == ["a", "b"] && taken.allSatisfy { $0.deliveryCount == 2 })
        try await waitUntil { try await consumers() == ["w"] }
        // The event comes once the script's reply is read: the server may show the removal a moment before.
        let removal = await events.next { if case .consumersRemoved(_, let names) = $0 { names.contains("crashed") } else { false } }
        #expect(removal != nil)
        // crashed went only after its entries were taken over: the removal of a consumer with pending entries
        // would have dropped them.
        let order = events.all.compactMap { event -> String? in
            switch event {
            case .claimed(_, _, let from) where from.contains("crashed"): "claimed"
            case .consumersRemoved(_, let names) where names.contains("crashed"): "removed crashed"
            default: nil
            }
        }
        #expect(order == ["claimed", "removed crashed"], "\(events.all)")
        let removedRetired = events.all.contains { if case .consumersRemoved(_, let names) = $0 { names.contains("retired") } else { false } }
        #expect(removedRetired)
        try await waitUntil { try await Self.pendingCount(admin, stream, "g") == 0 }
        await consumer.close()
        await admin.close()
    }

    @Test func severalStreamsAutomaticAcknowledgementAndClosingReleasesWhatIsHeld() async throws {
        let publisher = try await Publisher.connect(to: SharedServer.configuration)
        let a = uniqueName("a"), b = uniqueName("b")
        var options = Self.quick(prefetch: 4, claimIdle: .seconds(5))
        options.acknowledgesAutomatically = true
        let consumer = try await StreamConsumer.connect(
            to: SharedServer.configuration, streams: [RedisName(a), RedisName(b)], group: "g", consumer: "auto",
            options: options)
        _ = try await publisher.append(contentsOf: ["a0", "a1"], to: a)
        _ = try await publisher.append(contentsOf: ["b0", "b1"], to: b)
        var got: [String] = []
        for try await message in consumer {
            got.append(message.string)
            if got.count == 4 { break }  // the fourth is not acknowledged: the loop left it
        }
        #expect(got.sorted() == ["a0", "a1", "b0", "b1"])
        try await waitUntil {
            let pending = try await Self.pendingCount(publisher.connection, a, "g") + Self.pendingCount(publisher.connection, b, "g")
            return pending == 1
        }
        // Closing releases the held entry at once (idle time set to claimIdle): another consumer takes it over well
        // before five seconds.
        await consumer.close()
        let started = ContinuousClock.now
        let taker = try await StreamConsumer.connect(
            to: SharedServer.configuration, streams: [RedisName(a), RedisName(b)], group: "g", consumer: "taker",
            options: Self.quick(claimIdle: .seconds(5)))
        let taken = try await Self.take(taker, 1)
        #expect(taken.map(\.string) == [got[3]])
        #expect(ContinuousClock.now - started < .seconds(4))
        await taker.close()
        await publisher.close()
    }

    @Test func badOptionsAndAWrongTypeFailTheConnect() async throws {
        let connection = try await RedisConnection.connect(to: SharedServer.configuration)
        let key = uniqueName("string")
        try await connection.send("SET", key, "not a stream")
        await #expect(throws: RedisError.self) {
            _ = try await StreamConsumer.connect(
                to: SharedServer.configuration, streams: [RedisName(key)], group: "g", consumer: "w")
        }
        var zero = StreamConsumer.Options()
        zero.prefetch = 0
        await #expect(throws: RedisError.self) {
            _ = try await StreamConsumer.connect(to: SharedServer.configuration, streams: ["s"], group: "g", consumer: "w", options: zero)
        }
        await #expect(throws: RedisError.self) {
            _ = try await StreamConsumer.connect(to: SharedServer.configuration, streams: [], group: "g", consumer: "w")
        }
        await connection.close()
    }
}
