import Foundation
import RedisPubSub
import Testing

/// The sample binaries' stream mode (issue 13): `publisher --stream`, `subscriber --stream [--group | --from]`.
@Suite("Sample binaries: streams and consumer groups", .serialized)
struct StreamSampleBinaryTests {
    @Test func publisherAppendsAndSubscriberConsumesPrintingTheDocumentedLines() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let subscriber = try SampleProcess(
            "subscriber", ["--url", server.url, "--stream", "jobs", "--group", "g", "--consumer", "c1", "--count", "3"])
        try await waitUntil { subscriber.stdout.contains("\n") }
        #expect(subscriber.stdoutLines.first == "Consuming jobs in group g as c1")
        let publisher = try SampleProcess("publisher", ["--url", server.url, "--stream", "jobs", "--count", "3", "--interval", "0.05"])
        #expect(await publisher.exitStatus() == 0)
        #expect(await subscriber.exitStatus() == 0)
        let published = publisher.stdoutLines
        #expect(published.count == 3)
        for line in published {
            #expect(line.wholeMatch(of: try Regex(#"Published \d+-\d+ to jobs: Hello at "# + SampleBinaryTests.time)) != nil, "\(line)")
        }
        let received = Array(subscriber.stdoutLines.dropFirst())
        #expect(received.count == 3)
        #expect(received.map { $0.split(separator: ": ", maxSplits: 1).last } == published.map { $0.split(separator: ": ", maxSplits: 1).last })
        for line in received { #expect(line.hasPrefix("Received message on jobs: Hello at "), "\(line)") }
        // Each was acknowledged before the subscriber exited.
        let connection = try await RedisConnection.connect(to: RedisConfiguration(url: server.url))
        #expect(try await connection.send("XPENDING", "jobs", "g").array?.first?.int == 0)
        await connection.close()
    }

    @Test func withJSONAPayloadThatDoesNotDecodeEndsInTheDeadLetterStream() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let connection = try await RedisConnection.connect(to: RedisConfiguration(url: server.url))
        let subscriber = try SampleProcess("subscriber", [
            "--url", server.url, "--stream", "jobs", "--group", "g", "--json", "--max-deliveries", "1",
            "--claim-idle", "0.3", "--dead-letter", "bad-jobs", "--count", "1",
        ])
        try await waitUntil { subscriber.stdout.contains("\n") }
        try await connection.send("XADD", "jobs", "*", "payload", "not json")
        try await waitUntil(timeout: .seconds(20)) { try await connection.send("XLEN", "bad-jobs").int == 1 }
        let publisher = try SampleProcess("publisher", ["--url", server.url, "--stream", "jobs", "--json", "--count", "1"])
        #expect(await publisher.exitStatus() == 0)
        #expect(await subscriber.exitStatus() == 0)
        #expect(subscriber.stdoutLines.last?.hasPrefix("Received notification #1 on jobs: Hello at ") == true, "\(subscriber.stdout)")
        #expect(subscriber.stderr.contains("Not acknowledged: jobs"), "\(subscriber.stderr)")
        #expect(subscriber.stderr.contains("to bad-jobs"), "\(subscriber.stderr)")
        let letter = try await connection.send("XRANGE", "bad-jobs", "-", "+")
        let fields = letter.array?.first?.array?.last?.array?.compactMap(\.string) ?? []
        #expect(fields.prefix(4) == ["payload", "not json", "original-stream", "jobs"])
        #expect(try await connection.send("XPENDING", "jobs", "g").array?.first?.int == 0)
        await connection.close()
    }

    @Test func aKilledConsumerProcessIsTakenOverAndNothingIsLost() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let configuration = try RedisConfiguration(url: server.url)
        let connection = try await RedisConnection.connect(to: configuration)
        try await connection.send("XGROUP", "CREATE", "jobs", "workers", "0", "MKSTREAM")
        let publisher = try await Publisher.connect(to: configuration)
        let total = 2000
        let ids = try await publisher.append(contentsOf: (0..<total).map { "job \($0)" }, to: "jobs")
        #expect(ids.count == total)
        let arguments = ["--url", server.url, "--stream", "jobs", "--group", "workers", "--work", "0.002", "--claim-idle", "1"]
        let first = try SampleProcess("subscriber", arguments + ["--consumer", "first"])
        try await waitUntil(timeout: .seconds(60)) { first.stdoutLines.count > total / 2 }
        first.signal(SIGKILL)  // halfway: its prefetched and unacknowledged entries stay pending under its name
        _ = await first.exitStatus()
        let second = try SampleProcess("subscriber", arguments + ["--consumer", "second"])
        let prefix = "Received message on jobs: "
        func processed() -> [String] {
            (first.stdoutLines + second.stdoutLines).filter { $0.hasPrefix(prefix) }.map { String($0.dropFirst(prefix.count)) }
        }
        try await waitUntil(timeout: .seconds(90)) { Set(processed()).count == total }
        try await waitUntil(timeout: .seconds(10)) {
            try await connection.send("XPENDING", "jobs", "workers").array?.first?.int == 0
        }
        let all = processed()
        let unique = Set(all)
        #expect(unique == Set((0..<total).map { "job \($0)" }))
        // Duplicates: only what the killed process had printed but not acknowledged, at most its prefetch (16).
        let duplicates = all.count - unique.count
        print("crash and takeover: \(all.count) printed, \(unique.count) unique, \(duplicates) processed twice")
        #expect(duplicates <= 16, "\(duplicates) duplicates")
        #expect(second.stderr.contains("claimed"), "\(second.stderr)")
        second.signal(SIGTERM)
        #expect(await second.exitStatus() == 0)
        await publisher.close()
        await connection.close()
    }

    @Test func withoutAGroupTheSubscriberReadsEveryEntryFromWhereItIsToldAndAcrossAKilledConnection() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let configuration = try RedisConfiguration(url: server.url)
        let publisher = try await Publisher.connect(to: configuration, retry: .whileReconnecting(upTo: .seconds(10)))
        let ids = try await publisher.append(contentsOf: ["a", "b", "c"], to: "feed")
        let fromStart = try SampleProcess("subscriber", ["--url", server.url, "--stream", "feed", "--from", "0", "--count", "3"])
        #expect(await fromStart.exitStatus() == 0)
        #expect(fromStart.stdoutLines == ["Reading feed from 0"] + ["a", "b", "c"].map { "Received message on feed: \($0)" })
        let afterFirst = try SampleProcess(
            "subscriber", ["--url", server.url, "--stream", "feed", "--from", "\(ids[0])", "--count", "2"])
        #expect(await afterFirst.exitStatus() == 0)
        #expect(Array(afterFirst.stdoutLines.dropFirst()) == ["Received message on feed: b", "Received message on feed: c"])
        // From new entries (the default): the old ones are not printed; a killed connection skips nothing.
        let live = try SampleProcess("subscriber", ["--url", server.url, "--stream", "feed", "--count", "4"])
        try await waitUntil { live.stdout.contains("\n") }
        #expect(live.stdoutLines.first == "Reading feed from $")
        _ = try await publisher.append(contentsOf: ["d", "e"], to: "feed")
        try await waitUntil { live.stdoutLines.count == 3 }
        let admin = try await RedisConnection.connect(to: configuration)
        _ = try await admin.send("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        _ = try await publisher.append(contentsOf: ["f", "g"], to: "feed")
        #expect(await live.exitStatus() == 0)
        #expect(Array(live.stdoutLines.dropFirst()) == ["d", "e", "f", "g"].map { "Received message on feed: \($0)" })
        #expect(live.stderr.contains("subscriber: disconnected"), "\(live.stderr)")
        let wrong = try SampleProcess("subscriber", ["--url", server.url, "--stream", "feed", "--from", "yesterday"])
        #expect(await wrong.exitStatus() != 0)
        #expect(wrong.stderr.contains("--from must be"), "\(wrong.stderr)")
        await admin.close()
        await publisher.close()
    }
}
