import Foundation
@testable import RedisPubSub
import Testing

/// Against private Redis Clusters on loopback (3 primaries, a replica each), one per test: the tests migrate slots,
/// fail primaries over and kill nodes.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct ClusterTests {
    @Test func slotFunctionMatchesCLUSTERKEYSLOTForTenThousandNames() async throws {
        let cluster = try RedisCluster(primaries: 3, replicas: 0)
        defer { cluster.stop() }
        let connection = try await RedisConnection.connect(to: RedisConfiguration(url: cluster.url()))
        defer { Task { await connection.close() } }
        var generator = SystemRandomNumberGenerator()
        var names: [[UInt8]] = [
            Array("orders:{eu}".utf8), Array("{user1000}.following".utf8), Array("foo{}{bar}".utf8),
            Array("foo{{bar}}zap".utf8), Array("foo{bar}{zap}".utf8), Array("{}".utf8), Array("a{b".utf8),
            Array("}{".utf8), [], [0xFF, 0x00, 0x7B, 0x01, 0x7D],
        ]
        let alphabet = Array("ab{}:x01".utf8)
        while names.count < 10_000 {
            let length = Int.random(in: 0...24, using: &generator)
            if names.count % 3 == 0 {
                names.append((0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) })
            } else {
                names.append((0..<length).map { _ in alphabet.randomElement(using: &generator)! })
            }
        }
        var mismatches: [String] = []
        try await withThrowingTaskGroup(of: (Int, Int).self) { group in
            for (index, name) in names.enumerated() {
                group.addTask {
                    let reply = try await connection.send(["CLUSTER", "KEYSLOT", RedisArgument(name)])
                    return (index, reply.int ?? -1)
                }
            }
            for try await (index, slot) in group where slot != ClusterSlot.of(names[index]) {
                mismatches.append("\(names[index]): server \(slot), ours \(ClusterSlot.of(names[index]))")
            }
        }
        #expect(mismatches.isEmpty, "\(mismatches.prefix(5))")
    }

    @Test func theMapFromCLUSTERSHARDSMatchesWhatTheNodesSay() async throws {
        let cluster = try RedisCluster()
        defer { cluster.stop() }
        let connection = try await RedisConnection.connect(to: RedisConfiguration(url: cluster.url()))
        defer { Task { await connection.close() } }
        let shards = try ClusterTopology.parse(shards: try await connection.send(["CLUSTER", "SHARDS"]), tls: false)
        let slots = try ClusterTopology.parse(slots: try await connection.send(["CLUSTER", "SLOTS"]))
        #expect(shards.coversEverySlot)
        #expect(Set(shards.primaries.map(\.port)) == Set(try cluster.primaries()))
        #expect(shards.shards.allSatisfy { $0.replicas.count == 1 })
        for slot in [0, 1, 5460, 5461, 6893, 10922, 10923, 16383] {
            #expect(shards.primary(ofSlot: slot)?.port == (try cluster.owner(ofSlot: slot)))
            #expect(slots.primary(ofSlot: slot) == shards.primary(ofSlot: slot))
        }
    }

    @Test func aThousandShardChannelsUseOneConnectionPerPrimaryAndEachReceives() async throws {
        let cluster = try RedisCluster()
        defer { cluster.stop() }
        let subscriber = try await ClusterSubscriber.connect(to: try cluster.configuration)
        let publisher = try await ClusterPublisher.connect(to: try cluster.configuration)
        let channels = (0..<1000).map { "orders:\($0)" }
        let subscription = try await subscriber.subscribe(
            channels: [], patterns: [], shardChannels: channels, bufferingPolicy: .unbounded)
        #expect(subscription.isSubscribed)
        #expect(subscription.shardChannels.count == 1000)
        let primaries = try cluster.primaries()
        #expect(Set(await subscriber.connectedNodes().map(\.port)) == Set(primaries))
        for port in primaries {
            // CLIENT LIST on each primary: exactly one connection in sharded-subscribe mode (ours).
            let clients = try cluster.cli(port, "client", "list").split(separator: "\n")
            #expect(clients.filter { $0.contains("cmd=ssubscribe") }.count == 1, "\(port): \(clients)")
        }
        for channel in channels {
            #expect(try await publisher.publish("to \(channel)", toShard: channel) == 1)
        }
        let messages = try await collect(subscription, 1000)
        #expect(Set(messages.map(\.string)) == Set(channels.map { "to \($0)" }))
        #expect(messages.allSatisfy { $0.isSharded && $0.string == "to \($0.channel)" })
        await subscription.unsubscribe()
        try await waitUntil { await subscriber.connectedNodes().isEmpty }
        await publisher.close()
        await subscriber.close()
    }

    @Test func aSeedThatIsDownAtStartUpIsSkipped() async throws {
        let cluster = try RedisCluster(primaries: 3, replicas: 0)
        defer { cluster.stop() }
        let down = try RefusingPort()
        let configuration = try RedisClusterConfiguration(urls: ["redis://127.0.0.1:\(down.port)", cluster.url()])
        let subscriber = try await ClusterSubscriber.connect(to: configuration)
        let publisher = try await ClusterPublisher.connect(to: configuration)
        let subscription = try await subscriber.subscribe(toShardChannels: "a", "b", "c")
        for name in ["a", "b", "c"] { try await publisher.publish(name, toShard: name) }
        #expect(Set(try await collect(subscription, 3).map(\.string)) == ["a", "b", "c"])
        await publisher.close()
        await subscriber.close()
    }

    @Test func noSeedAnswersFailsStartUpNamingEachSeed() async throws {
        let first = try RefusingPort()
        let second = try RefusingPort()
        var seeds = try [first, second].map { try RedisConfiguration(url: "redis://127.0.0.1:\($0.port)") }
        for index in seeds.indices { seeds[index].connectTimeout = .milliseconds(500) }
        let error = await #expect(throws: RedisError.self) {
            _ = try await ClusterSubscriber.connect(to: RedisClusterConfiguration(seeds: seeds))
        }
        #expect(error?.code == .connectionClosed)
        #expect(error?.message.contains("\(first.port)") == true && error?.message.contains("\(second.port)") == true)
    }

    @Test func aSingleServerIsNotTakenForACluster() async throws {
        let error = await #expect(throws: RedisError.self) {
            _ = try await ClusterSubscriber.connect(to: RedisClusterConfiguration(seeds: [try SharedServer.configuration]))
        }
        #expect(error?.code == .invalidConfiguration)
        #expect(error?.message.contains("not a Redis Cluster node") == true)
    }
}
