import Foundation
import RedisPubSub
import Testing

@Suite("Commands against a real server")
struct CommandTests {
    @Test func pingAndEcho() async throws {
        let connection = try await SharedServer.connect()
        #expect(try await connection.ping() == "PONG")
        #expect(try await connection.ping("hello") == "hello")
        await connection.close()
    }

    @Test func setAndGetRoundTrip() async throws {
        let connection = try await SharedServer.connect()
        let key = uniqueName()
        #expect(try await connection.send("SET", key, "value") == .simpleString("OK"))
        #expect(try await connection.send("GET", key) == .bulkString(Array("value".utf8)))
        #expect(try await connection.send("INCRBY", key + ":n", 5) == .integer(5))
        #expect(try await connection.send("GET", uniqueName()) == .null)
        try await connection.send("RPUSH", key + ":l", "a", "b")
        #expect(try await connection.send(["LRANGE", RedisArgument(key + ":l"), 0, -1]) == .array([.bulkString([97]), .bulkString([98])]))
        await connection.close()
    }

    @Test func serverErrorReplyCarriesTheServersMessageAndKeepsTheConnection() async throws {
        let connection = try await SharedServer.connect()
        await #expect {
            try await connection.send("NO-SUCH-COMMAND", "x")
        } throws: { error in
            guard let error = error as? RedisError else { return false }
            return error.code == .serverError && error.message.hasPrefix("ERR unknown command")
        }
        let key = uniqueName()
        try await connection.send("SET", key, "text")
        await #expect { try await connection.send("INCR", key) } throws: { error in
            (error as? RedisError)?.message == "ERR value is not an integer or out of range"
        }
        // An error nested in an array stays a value.
        let exec = try await connection.transaction([["INCR", RedisArgument(key)], ["PING"]])
        #expect(exec == [.error("ERR value is not an integer or out of range"), .simpleString("PONG")])
        #expect(try await connection.ping() == "PONG")
        await connection.close()
    }

    @Test func binaryArgumentsWithNULAndInvalidUTF8() async throws {
        let connection = try await SharedServer.connect()
        let key: [UInt8] = Array(uniqueName().utf8) + [0, 0xFF, 0xC3, 0x28]
        let value: [UInt8] = [0, 1, 0, 0xFF, 0xFE, 0xC3, 0x28, 13, 10, 0]
        try await connection.send("SET", key, value)
        #expect(try await connection.send("GET", key) == .bulkString(value))
        #expect(try await connection.send("STRLEN", key) == .integer(value.count))
        let empty = uniqueName()
        try await connection.send("SET", empty, [UInt8]())
        #expect(try await connection.send("GET", empty) == .bulkString([]))
        let unicode = "Grüße, 世界 🌍"
        try await connection.send("SET", empty, unicode)
        #expect(try await connection.send("GET", empty).string == unicode)
        await connection.close()
    }

    @Test func sixteenMegabyteValueRoundTrip() async throws {
        // 16 MB each way in a sanitizer build, alongside the whole suite: more than the default 5 s may pass.
        let connection = try await SharedServer.connect { $0.commandTimeout = .seconds(60) }
        let key = uniqueName()
        var value = [UInt8](repeating: 0, count: 16 * 1024 * 1024)
        for index in value.indices { value[index] = UInt8(truncatingIfNeeded: index &* 31 &+ index >> 13) }
        try await connection.send("SET", key, value)
        let reply = try await connection.send("GET", key)
        #expect(reply.bytes?.count == value.count)
        #expect(reply.bytes == value)
        try await connection.send("DEL", key)
        await connection.close()
    }

    @Test func thousandConcurrentCommandsFromHundredTasksGetTheirOwnReplies() async throws {
        let connection = try await SharedServer.connect()
        let mismatches = try await withThrowingTaskGroup(of: Int.self) { group in
            for task in 0..<100 {
                group.addTask {
                    var wrong = 0
                    for index in 0..<10 {
                        let token = "task-\(task)-command-\(index)-" + String(repeating: "x", count: task * 7)
                        if try await connection.send("ECHO", token).string != token { wrong += 1 }
                    }
                    return wrong
                }
            }
            return try await group.reduce(0, +)
        }
        #expect(mismatches == 0)
        await connection.close()
    }

    @Test func concurrentCommandsArePipelined() async throws {
        // 200 tasks each send one command while the server is paused. Pipelined, they reach the server in a handful
        // of reads; a client that waited for each reply before the next write would need 200.
        let server = try RedisServer.start()
        defer { server.stop() }
        let connection = try await RedisConnection.connect(to: .init(url: server.url))
        let observer = try await RedisConnection.connect(to: .init(url: server.url))
        func readsProcessed() async throws -> Int {
            let info = try await observer.send("INFO", "stats").string ?? ""
            let line = info.split(whereSeparator: \.isNewline).first { $0.hasPrefix("total_reads_processed:") }
            return Int(line?.split(separator: ":").last ?? "") ?? -1
        }
        let before = try await readsProcessed()
        server.pause()
        let results = Task {
            try await withThrowingTaskGroup(of: Bool.self) { group in
                for index in 0..<200 {
                    group.addTask { try await connection.send("ECHO", "\(index)").string == "\(index)" }
                }
                return try await group.reduce(true) { $0 && $1 }
            }
        }
        try await Task.sleep(for: .milliseconds(300))
        server.resume()
        #expect(try await results.value)
        let reads = try await readsProcessed() - before
        #expect(reads < 20, "the server needed \(reads) reads for 200 concurrent commands")
        await connection.close()
        await observer.close()
    }

    @Test func publishAndIntrospection() async throws {
        let connection = try await SharedServer.connect()
        let channel = uniqueName("channel")
        #expect(try await connection.publish("nobody listens", to: channel) == 0)
        #expect(try await connection.publish([0, 1, 2] as [UInt8], toShard: channel) == 0)
        #expect(try await connection.pubsubChannels(matching: channel) == [])
        #expect(try await connection.pubsubNumberOfSubscribers([channel]) == [RedisName(channel): 0])
        #expect(try await connection.pubsubNumberOfPatterns() >= 0)
        #expect(try await connection.pubsubShardChannels(matching: channel) == [])
        #expect(try await connection.pubsubShardNumberOfSubscribers([channel]) == [RedisName(channel): 0])
        await connection.close()
    }

    @Test func publishCountsAndIntrospectionSeeARealSubscriber() async throws {
        // redis-cli subscribes to a plain and a sharded channel; our connection sees it through PUBSUB and PUBLISH.
        let server = try RedisServer.start()
        defer { server.stop() }
        let channel = uniqueName("channel")
        let cli = try ExternalSubscriber(port: server.port, command: "SUBSCRIBE", channel: channel)
        defer { cli.stop() }
        let shardCLI = try ExternalSubscriber(port: server.port, command: "SSUBSCRIBE", channel: channel + ":s")
        defer { shardCLI.stop() }
        let connection = try await RedisConnection.connect(to: .init(url: server.url))
        try await waitUntil { try await connection.pubsubNumberOfSubscribers([channel]) == [RedisName(channel): 1] }
        try await waitUntil { try await connection.pubsubShardNumberOfSubscribers([channel + ":s"]) == [RedisName(channel + ":s"): 1] }
        #expect(try await connection.pubsubChannels() == [RedisName(channel)])
        #expect(try await connection.pubsubShardChannels() == [RedisName(channel + ":s")])
        #expect(try await connection.publish("hello", to: channel) == 1)
        #expect(try await connection.publish("sharded", toShard: channel + ":s") == 1)
        try await waitUntil { cli.output.contains("hello") }
        try await waitUntil { shardCLI.output.contains("sharded") }
        await connection.close()
    }

    @Test func subscriptionCommandsAreRefusedBySend() async throws {
        let connection = try await SharedServer.connect()
        await #expect { try await connection.send("SUBSCRIBE", "x") } throws: { isRedisError($0, .invalidArgument) }
        #expect(try await connection.ping() == "PONG")
        await connection.close()
    }

    @Test func unixSocketDatabaseAndClientName() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: "unix://\(server.socketPath)?db=2")
        configuration.clientName = "orders-worker"
        let connection = try await RedisConnection.connect(to: configuration)
        #expect(try await connection.send("CLIENT", "GETNAME") == .bulkString(Array("orders-worker".utf8)))
        try await connection.send("SET", "where", "db2")
        let tcp = try await RedisConnection.connect(to: .init(url: server.url + "/2"))
        #expect(try await tcp.send("GET", "where").string == "db2")
        let db0 = try await RedisConnection.connect(to: .init(url: server.url))
        #expect(try await db0.send("GET", "where") == .null)
        for c in [connection, tcp, db0] { await c.close() }
    }
}

/// `redis-cli` subscribed to one channel, its output collected: a peer that is not this package.
final class ExternalSubscriber: @unchecked Sendable {
    // @unchecked Sendable because: `buffer` is only touched under `lock`; the rest is immutable.
    private let process = Process()
    private let lock = NSLock()
    private var buffer = ""

    init(port: Int, command: String, channel: String) throws {
        let pipe = Pipe()
        process.executableURL = try RedisServer.find("redis-cli")
        process.arguments = ["-h", "127.0.0.1", "-p", "\(port)", command, channel]
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        pipe.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let data = handle.availableData
            guard let self, !data.isEmpty else { return }
            self.lock.lock()
            self.buffer += String(decoding: data, as: UTF8.self)
            self.lock.unlock()
        }
        try process.run()
    }

    var output: String {
        lock.lock()
        defer { lock.unlock() }
        return buffer
    }

    func stop() {
        // SIGKILL: a child spawned from a cooperative-pool thread inherits libdispatch's blocked signal mask,
        // so it would never see SIGTERM.
        if process.endedStatus() == nil {
            kill(process.processIdentifier, SIGKILL)
            process.waitForExit()  // not `waitUntilExit()`: see `Process.endedStatus()`
        }
    }
}

/// Polls `condition` every 20 ms for up to `timeout`, recording a failure if it never holds.
func waitUntil(
    timeout: Duration = .seconds(10), _ condition: () async throws -> Bool, sourceLocation: SourceLocation = #_sourceLocation
) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(20))
    }
    Issue.record("condition not met within \(timeout)", sourceLocation: sourceLocation)
}
