import Foundation
@testable import RedisPubSub
import Testing

/// `Publisher.append`: entries in a Redis Stream, with the message in a field named `payload` (issue 13).
@Suite("Streams: appending")
struct StreamAppendTests {
    /// The entries of `stream` as `(id, payload)`, read with XRANGE.
    private func entries(_ connection: RedisConnection, _ stream: String) async throws -> [(String, [UInt8])] {
        let reply = try await connection.send("XRANGE", stream, "-", "+")
        return try (reply.array ?? []).map { entry in
            let parts = try #require(entry.array)
            let fields = try #require(parts[1].array)
            #expect(fields.count == 2 && fields[0].string == "payload")
            return (try #require(parts[0].string), try #require(fields[1].bytes))
        }
    }

    @Test func anAppendIsAnEntryWithAPayloadFieldAndReturnsItsID() async throws {
        let publisher = try await Publisher.connect(to: SharedServer.configuration)
        let stream = uniqueName("append")
        let first = try await publisher.append("hello", to: stream)
        let second = try await publisher.append([0x00, 0xFF], to: stream)
        let third = try await publisher.append(json: ["n": 1], to: stream)
        #expect(first < second && second < third)
        let stored = try await entries(publisher.connection, stream)
        #expect(stored.map(\.0) == [first, second, third].map(\.description))
        #expect(stored.map(\.1) == [Array("hello".utf8), [0x00, 0xFF], Array(#"{"n":1}"#.utf8)])
        await publisher.close()
    }

    @Test func aBatchIsAppendedInOrderInOneCall() async throws {
        let publisher = try await Publisher.connect(to: SharedServer.configuration)
        let stream = uniqueName("batch")
        let ids = try await publisher.append(contentsOf: (0..<1000).map { "m\($0)" }, to: stream)
        #expect(ids.count == 1000)
        #expect(ids == ids.sorted() && Set(ids).count == 1000)
        let stored = try await entries(publisher.connection, stream)
        #expect(stored.map(\.0) == ids.map(\.description))
        #expect(stored.map { String(decoding: $0.1, as: UTF8.self) } == (0..<1000).map { "m\($0)" })
        await publisher.close()
    }

    @Test func trimmingPerCallAndPerStream() async throws {
        let publisher = try await Publisher.connect(to: SharedServer.configuration)
        let exact = uniqueName("exact")
        for index in 0..<20 { try await publisher.append("\(index)", to: exact, trim: .maxLength(5, exact: true)) }
        #expect(try await publisher.connection.send("XLEN", exact).int == 5)
        #expect(try await entries(publisher.connection, exact).map { String(decoding: $0.1, as: UTF8.self) } == ["15", "16", "17", "18", "19"])

        // Approximate trimming bounds the stream by whole nodes (100 entries each by default): never below the bound.
        let approximate = uniqueName("approximate")
        _ = try await publisher.append(contentsOf: (0..<1000).map { "\($0)" }, to: approximate, trim: .maxLength(100))
        let length = try #require(try await publisher.connection.send("XLEN", approximate).int)
        #expect(length >= 100 && length < 1000)

        let perStream = uniqueName("per-stream")
        publisher.setTrim(.maxLength(3, exact: true), for: perStream)
        for index in 0..<10 { try await publisher.append("\(index)", to: perStream) }
        #expect(try await publisher.connection.send("XLEN", perStream).int == 3)
        try await publisher.append("own", to: perStream, trim: .maxLength(1, exact: true))  // a call's trim wins
        #expect(try await publisher.connection.send("XLEN", perStream).int == 1)
        publisher.setTrim(nil, for: perStream)
        for index in 0..<5 { try await publisher.append("\(index)", to: perStream) }
        #expect(try await publisher.connection.send("XLEN", perStream).int == 6)

        let window = uniqueName("window")
        let old = try await publisher.append("old", to: window)
        let cut = StreamEntryID(milliseconds: old.milliseconds + 1, sequence: 0)
        try await Task.sleep(for: .milliseconds(5))
        try await publisher.append("new", to: window, trim: .minimumID(cut, exact: true))
        #expect(try await entries(publisher.connection, window).map { String(decoding: $0.1, as: UTF8.self) } == ["new"])
        try await publisher.append("newer", to: window, trim: .newerThan(.seconds(3600)))
        #expect(try await publisher.connection.send("XLEN", window).int == 2)
        await publisher.close()
    }

    @Test func appendIfExistsNeverCreatesTheStream() async throws {
        let publisher = try await Publisher.connect(to: SharedServer.configuration)
        let stream = uniqueName("nomkstream")
        #expect(try await publisher.appendIfExists("early", to: stream) == nil)
        #expect(try await publisher.connection.send("EXISTS", stream).int == 0)
        let id = try await publisher.append("first", to: stream)
        let later = try #require(try await publisher.appendIfExists("second", to: stream))
        #expect(id < later)
        #expect(try await publisher.connection.send("XLEN", stream).int == 2)
        await publisher.close()
    }

    @Test func aKeyThatIsNoStreamIsAClearErrorAndStaysAsItWas() async throws {
        let publisher = try await Publisher.connect(to: SharedServer.configuration)
        let key = uniqueName("string")
        try await publisher.connection.send("SET", key, "value")
        await #expect { try await publisher.append("x", to: key) } throws: {
            isRedisError($0, .serverError) && "\($0)".contains("WRONGTYPE")
        }
        await #expect { try await publisher.append(contentsOf: ["a", "b"], to: key) } throws: { isRedisError($0, .serverError) }
        #expect(try await publisher.connection.send("GET", key).string == "value")
        await publisher.close()
    }

    @Test func aTimeWindowIsCountedFromEachAppend() {
        let words: [[UInt8]] = StreamTrim.newerThan(.milliseconds(1500)).arguments(now: 10_000).map(\.bytes)
        let expected: [[UInt8]] = [Array("MINID".utf8), Array("~".utf8), Array("8500-0".utf8)]
        #expect(words == expected)
        let far: [[UInt8]] = StreamTrim.newerThan(.seconds(Int64.max)).arguments(now: 10_000).map(\.bytes)
        let zero: [UInt8] = Array("0-0".utf8)
        #expect(far.last == zero)  // saturates instead of trapping
    }

    @Test func entryIDsParseAndOrder() {
        #expect(StreamEntryID("1700000000000-5") == StreamEntryID(milliseconds: 1_700_000_000_000, sequence: 5))
        #expect(StreamEntryID("42") == StreamEntryID(milliseconds: 42, sequence: 0))
        for bad in ["", "-", "1-", "-1", "a-1", "1-2-3", "99999999999999999999999-0", "1 -2"] {
            #expect(StreamEntryID(bad) == nil, "\(bad)")
        }
        #expect(StreamEntryID(milliseconds: 1, sequence: 9) < StreamEntryID(milliseconds: 2, sequence: 0))
        #expect(StreamEntryID(milliseconds: 7, sequence: 1).description == "7-1")
    }

    /// With `appendonly yes`, every append that returned was written to the append-only file before its reply: a
    /// kill -9 of the server process loses none, and the restarted server has them in order. (Surviving a crash of
    /// the machine itself takes `appendfsync always` too, which this test sets but cannot show.)
    @Test func everyReturnedAppendSurvivesAKill9OfTheServerWithAppendonly() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("redis-pubsub-aof-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let durable = ["--appendonly", "yes", "--appendfsync", "always", "--dir", directory.path]
        let server = try RedisServer.start(durable)
        let port = server.port
        var configuration = try RedisConfiguration(url: server.url)
        configuration.reconnect = .disabled
        let publisher = try await Publisher.connect(to: configuration)
        let stream = "durable"
        let acknowledged = Locked<[StreamEntryID]>([])
        let appending = Task {
            for index in 0..<100_000 {
                guard let id = try? await publisher.append("m\(index)", to: stream) else { return }
                acknowledged.withLock { $0.append(id) }
            }
        }
        while acknowledged.withLock({ $0.count }) < 300 { try await Task.sleep(for: .milliseconds(10)) }
        server.stop()  // SIGKILL, mid-stream
        await appending.value
        await publisher.close()
        let restarted = try RedisServer.start(durable, port: port)
        defer { restarted.stop() }
        let connection = try await RedisConnection.connect(to: RedisConfiguration(url: restarted.url))
        let stored = try await entries(connection, stream).map(\.0)
        let seen = acknowledged.withLock { $0 }.map(\.description)
        let allThere = Set(seen).isSubset(of: Set(stored))
        #expect(allThere, "\(seen.count) appends returned, \(stored.count) entries after the restart")
        #expect(Array(stored.prefix(seen.count)) == seen)  // in order, nothing missing in between
        await connection.close()
    }
}
