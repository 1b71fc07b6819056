import Foundation
@testable import RedisPubSub
import ServiceLifecycle
import Testing

/// `StreamReader`: fan-out reading without a group (`XREAD`), resuming after its own last ID (issue 13).
@Suite("Streams: reading without a group")
struct StreamReaderTests {
    static let quick = StreamReader.Options(bufferSize: 100, blockTimeout: .milliseconds(200))

    /// Reads `count` entries within `timeout` through `iterator`; fails the test (returning what it got) when fewer
    /// arrive.
    static func take(
        _ reader: StreamReader, _ count: Int, timeout: Duration = .seconds(20),
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws -> [StreamEntry] {
        let got = Locked<[StreamEntry]>([])
        let finished = await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                do {
                    for try await entry in reader {
                        let total = got.withLock { $0.append(entry); return $0.count }
                        if total == count { break }
                    }
                } catch {
                    Issue.record("the reader failed: \(error)", sourceLocation: sourceLocation)
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
        let entries = got.withLock { $0 }
        if !finished || entries.count < count {
            Issue.record("got \(entries.count) of \(count) stream entries", sourceLocation: sourceLocation)
        }
        return entries
    }

    @Test func newEntriesAreThoseAppendedAfterConnectReturnsInOrder() async throws {
        let publisher = try await Publisher.connect(to: SharedServer.configuration)
        let stream = uniqueName("prices")
        _ = try await publisher.append(contentsOf: ["old 1", "old 2"], to: stream)
        let reader = try await StreamReader.connect(to: SharedServer.configuration, streams: [RedisName(stream)], options: Self.quick)
        let ids = try await publisher.append(contentsOf: (0..<300).map { "new \($0)" }, to: stream)
        try await publisher.connection.send("XADD", stream, "*", "kind", "raw")
        let entries = try await Self.take(reader, 301)
        let payloads = entries.prefix(300).map(\.string)
        #expect(payloads == (0..<300).map { "new \($0)" })
        #expect(entries.prefix(300).map(\.id) == ids)
        let raw = try #require(entries.last)
        #expect(raw.payload.isEmpty && raw.field("kind") == Array("raw".utf8) && raw.stream == RedisName(stream))
        #expect(String(describing: entries[0]).hasSuffix(": \"new 0\""))
        await reader.close()
        await publisher.close()
    }

    @Test func aStreamThatDoesNotExistYetIsReadFromItsFirstEntry() async throws {
        let publisher = try await Publisher.connect(to: SharedServer.configuration)
        let stream = uniqueName("later")
        let reader = try await StreamReader.connect(to: SharedServer.configuration, streams: [RedisName(stream)], options: Self.quick)
        try await Task.sleep(for: .milliseconds(300))  // past a block timeout on the missing key
        _ = try await publisher.append(contentsOf: ["first", "second"], to: stream)
        #expect(try await Self.take(reader, 2).map(\.string) == ["first", "second"])
        await reader.close()
        await publisher.close()
    }

    @Test func startsFromTheBeginningAfterAnIDOrAfterAnIDPerStream() async throws {
        let publisher = try await Publisher.connect(to: SharedServer.configuration)
        let a = uniqueName("a"), b = uniqueName("b")
        let aIDs = try await publisher.append(contentsOf: ["a0", "a1", "a2"], to: a)
        let bIDs = try await publisher.append(contentsOf: ["b0", "b1", "b2"], to: b)
        let streams = [RedisName(a), RedisName(b)]

        let all = try await StreamReader.connect(to: SharedServer.configuration, streams: streams, from: .beginning, options: Self.quick)
        let everything = try await Self.take(all, 6)
        #expect(everything.filter { $0.stream == RedisName(a) }.map(\.string) == ["a0", "a1", "a2"])
        #expect(everything.filter { $0.stream == RedisName(b) }.map(\.string) == ["b0", "b1", "b2"])
        await all.close()

        // One ID for every stream: b's IDs are all later than a's first, so b is read whole.
        let afterFirst = try await StreamReader.connect(
            to: SharedServer.configuration, streams: [RedisName(a)], from: .after(aIDs[0]), options: Self.quick)
        #expect(try await Self.take(afterFirst, 2).map(\.string) == ["a1", "a2"])
        await afterFirst.close()

        let each = try await StreamReader.connect(
            to: SharedServer.configuration, streams: streams, from: .afterEach([RedisName(a): aIDs[1], RedisName(b): bIDs[0]]),
            options: Self.quick)
        let resumed = try await Self.take(each, 3)
        #expect(Set(resumed.map(\.string)) == ["a2", "b1", "b2"])
        await each.close()

        // Only new entries of a stream the start does not name.
        let partial = try await StreamReader.connect(
            to: SharedServer.configuration, streams: streams, from: .afterEach([RedisName(a): aIDs[2]]), options: Self.quick)
        _ = try await publisher.append("b3", to: b)
        #expect(try await Self.take(partial, 1).map(\.string) == ["b3"])
        await partial.close()

        await #expect { try await StreamReader.connect(to: SharedServer.configuration, streams: streams, from: .afterEach(["other": .zero])) }
            throws: { isRedisError($0, .invalidConfiguration) }
        await #expect { try await StreamReader.connect(to: SharedServer.configuration, streams: []) }
            throws: { isRedisError($0, .invalidConfiguration) }
        await publisher.close()
    }

    @Test func everyReaderGetsEveryEntry() async throws {
        let publisher = try await Publisher.connect(to: SharedServer.configuration)
        let stream = RedisName(uniqueName("fanout"))
        let readers = try await withThrowingTaskGroup(of: StreamReader.self) { group in
            for _ in 0..<3 {
                group.addTask { try await StreamReader.connect(to: SharedServer.configuration, streams: [stream], options: Self.quick) }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        _ = try await publisher.append(contentsOf: (0..<1_000).map { "\($0)" }, to: stream.bytes)
        for reader in readers {
            let got = try await Self.take(reader, 1_000).map(\.string)
            #expect(got == (0..<1_000).map { "\($0)" })
            await reader.close()
        }
        await publisher.close()
    }

    @Test func killedConnectionsAndAServerRestartSkipNothingAndRepeatNothing() async throws {
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
        let reader = try await StreamReader.connect(
            to: configuration, streams: ["feed"], options: StreamReader.Options(bufferSize: 8, blockTimeout: .milliseconds(200)))
        let events = EventRecorder(reader.events())
        let seen = Locked<[String]>([])
        let reading = Task {
            for try await entry in reader { seen.withLock { $0.append(entry.string) } }
        }
        let admin = try await RedisConnection.connect(to: configuration)
        var appended: [String] = []
        for round in 0..<4 {
            for index in 0..<50 {
                let text = "r\(round)-\(index)"
                _ = try await publisher.append(text, to: "feed")
                appended.append(text)
                if index == 25 {
                    if round < 3 {
                        // Every client but the admin: the reader's blocking read and its info connection too.
                        let killed = try await admin.send("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes").int ?? 0
                        #expect(killed >= 1)
                    } else {
                        server.stop()  // SIGKILL; every append the publisher saw answered is in the AOF
                        server = try RedisServer.start(arguments, port: port)
                    }
                    try await Task.sleep(for: .milliseconds(100))
                }
            }
        }
        try await waitUntil(timeout: .seconds(20)) { seen.withLock { $0.count } >= appended.count }
        let got = seen.withLock { $0 }
        #expect(got == appended, "missing \(Set(appended).subtracting(got).sorted().prefix(5)), \(got.count) read")
        let disconnected = events.all.filter { if case .disconnected = $0 { true } else { false } }.count
        let reconnected = events.all.filter { $0 == .reconnected }.count
        #expect(disconnected >= 1 && reconnected == disconnected, "\(events.all)")
        reading.cancel()
        await reader.close()
        await publisher.close()
        await admin.close()
    }

    @Test func entriesTrimmedWhileTheApplicationLaggedAreCountedAsLost() async throws {
        let publisher = try await Publisher.connect(to: SharedServer.configuration)
        let stream = uniqueName("trimmed")
        let ids = try await publisher.append(contentsOf: (0..<100).map { "\($0)" }, to: stream)
        let reader = try await StreamReader.connect(
            to: SharedServer.configuration, streams: [RedisName(stream)], from: .beginning,
            options: StreamReader.Options(bufferSize: 10, blockTimeout: .milliseconds(200)))
        let events = EventRecorder(reader.events())
        try await waitUntil { reader.bufferedCount == 10 }  // read its buffer's worth, waiting for room
        // Exact trimming: the stream keeps its last 5 entries; 10 to 94 were never read.
        try await publisher.connection.send("XTRIM", stream, "MAXLEN", 5)
        let got = try await Self.take(reader, 15)
        #expect(got.map(\.string) == (0..<10).map { "\($0)" } + (95..<100).map { "\($0)" })
        let lost = await events.next { if case .lost = $0 { true } else { false } }
        #expect(lost == .lost(stream: RedisName(stream), count: 85, after: ids[9]))
        // Caught up, then more appended and trimmed past the reader while its loop does not take: counted too.
        let more = try await publisher.append(contentsOf: (100..<130).map { "\($0)" }, to: stream)
        try await waitUntil { reader.bufferedCount == 10 }  // 10 read ahead
        try await publisher.connection.send("XTRIM", stream, "MAXLEN", 3)
        let rest = try await Self.take(reader, 13)
        #expect(rest.map(\.string) == (100..<110).map { "\($0)" } + (127..<130).map { "\($0)" })
        let second = await events.next { if case .lost = $0 { true } else { false } }
        #expect(second == .lost(stream: RedisName(stream), count: 17, after: more[9]))
        await reader.close()
        await publisher.close()
    }

    @Test func aKeyOfAnotherTypeFailsTheStartOrIsReportedAndRetriedUntilItIsAStream() async throws {
        let connection = try await SharedServer.connect()
        let key = uniqueName("string")
        try await connection.send("SET", key, "not a stream")
        await #expect { try await StreamReader.connect(to: SharedServer.configuration, streams: [RedisName(key)]) }
            throws: { ($0 as? RedisError)?.message.hasPrefix("WRONGTYPE") == true }
        // From the beginning there is nothing to resolve: the reads fail, are reported, and are retried.
        let reader = try await StreamReader.connect(
            to: SharedServer.configuration, streams: [RedisName(key)], from: .beginning, options: Self.quick)
        let events = EventRecorder(reader.events())
        let failed = await events.next { if case .failed = $0 { true } else { false } }
        #expect(failed != nil)
        try await connection.send("DEL", key)
        try await connection.send("XADD", key, "*", "payload", "now a stream")
        #expect(try await Self.take(reader, 1).map(\.string) == ["now a stream"])
        await reader.close()
        await connection.close()
    }

    @Test func closeLetsTheLoopTakeWhatWasReadThenEndsItAndCancellingTheLoopCloses() async throws {
        let publisher = try await Publisher.connect(to: SharedServer.configuration)
        let stream = uniqueName("closing")
        _ = try await publisher.append(contentsOf: (0..<5).map { "\($0)" }, to: stream)
        let reader = try await StreamReader.connect(
            to: SharedServer.configuration, streams: [RedisName(stream)], from: .beginning, options: Self.quick)
        try await waitUntil { reader.bufferedCount == 5 }
        await reader.close()
        var got: [String] = []
        for try await entry in reader { got.append(entry.string) }
        #expect(got == (0..<5).map { "\($0)" })

        // Cancelling the loop closes the reader (its events end), even with entries buffered.
        let second = try await StreamReader.connect(
            to: SharedServer.configuration, streams: [RedisName(stream)], from: .beginning, options: Self.quick)
        let secondEvents = second.events()
        try await waitUntil { second.bufferedCount == 5 }
        let loop = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            var taken = 0
            for try await _ in second { taken += 1 }
            return taken
        }
        #expect(try await loop.value == 0)  // ends at once, without an error
        let ended = Task { for await _ in secondEvents {} }
        let finished = await withTaskGroup(of: Bool.self) { group in
            group.addTask { await ended.value; return true }
            group.addTask {
                try? await Task.sleep(for: .seconds(10))
                ended.cancel()  // the first child awaits it: a timeout must end it too
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
        #expect(finished)
        await publisher.close()
    }

    @Test func asAServiceItsRunEndsWithTheErrorAConnectionClosedForGoodWith() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.reconnect = .disabled
        let reader = try await StreamReader.connect(to: configuration, streams: ["s"], options: Self.quick)
        let consumer = try await StreamConsumer.connect(
            to: configuration, streams: ["s"], group: "g", consumer: "w", options: StreamConsumerTests.quick())
        let runs = [reader as any Service, consumer as any Service].map { service in
            Task { () -> RedisError? in
                do {
                    try await service.run()
                    return nil
                } catch {
                    return error as? RedisError ?? RedisError(.invalidArgument, "not a RedisError: \(error)")
                }
            }
        }
        try await Task.sleep(for: .milliseconds(200))
        server.stop()
        for run in runs {
            let outcome = await withTaskGroup(of: RedisError??.self) { group in
                group.addTask { await run.value }
                group.addTask {
                    try? await Task.sleep(for: .seconds(20))
                    run.cancel()  // else the group would wait for it for ever
                    return .none
                }
                let first = await group.next() ?? .none
                group.cancelAll()
                return first
            }
            guard case .some(let error) = outcome else {
                Issue.record("run() did not return within 20 s")
                continue
            }
            #expect(error?.code == .connectionClosed, "\(String(describing: error))")
        }
    }
}
