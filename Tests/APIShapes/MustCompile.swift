// Type-checked against the built module by scripts/check-api-shapes.sh: every line here must compile. Together with
// MustNotCompile.swift it pins down what overload resolution makes of each expression a user may write.
import Foundation
import RedisPubSub

struct Note: Codable { let id: Int }

func shapes(publisher: Publisher, subscriber: Subscriber, connection: RedisConnection) async throws {
    let text = "hi"
    let bytes: [UInt8] = [1, 2]
    let channel = "news"
    // Payloads: every text and byte-array expression.
    try await publisher.publish("literal", to: "ch")
    try await publisher.publish(text, to: channel)
    try await publisher.publish(Array(text.utf8), to: channel)
    try await publisher.publish([0x00, 0xFF], to: channel)
    try await publisher.publish(bytes[...], to: channel)
    try await publisher.publish(Data(bytes), to: channel)
    try await publisher.publish(text.dropFirst(), to: channel)
    try await publisher.publish(json: Note(id: 1), to: channel)
    try await publisher.publish(json: 42, to: channel)
    try await publisher.publish(contentsOf: ["a", "b"], to: channel)
    try await publisher.publish(contentsOf: [bytes, bytes], toShard: channel)
    try await publisher.publish("x", toShard: "shard")
    try await connection.publish([0x00], to: "user:\(1)")
    // Names: text, bytes, interpolation.
    let subscription = try await subscriber.subscribe(to: "a", channel, "user:\(2)", [0x80, 0x81], RedisName(bytes: [0]))
    _ = try await subscriber.subscribe(toPatterns: "news.*")
    _ = try await subscriber.subscribe(toShardChannels: channel)
    _ = try await subscriber.subscribe(channels: [channel, bytes], patterns: ["p*"], shardChannels: [])
    try await subscription.add(channels: ["b"], patterns: ["q*"])
    await subscription.remove(channels: ["b"])
    let counts: [RedisName: Int] = try await connection.pubsubNumberOfSubscribers([channel, bytes])
    _ = counts["news"]
    _ = counts[RedisName(channel)]
    let names: [RedisName] = try await connection.pubsubChannels(matching: "n*")
    _ = names.map(\.description)
    // Errors are RedisError, no cast needed.
    do throws(RedisError) {
        try await publisher.publish("x", to: channel)
        _ = try await subscriber.subscribe(to: channel)
        for try await _ in subscription { break }
    } catch {
        _ = error.code == .cancelled
    }
    // Iteration and scoped subscriptions.
    _ = try await subscription.nextMessage(timeout: .seconds(1))
    for try await result in subscription.decoded(as: Note.self) {
        if case .failure(let error) = result { _ = error.message }
    }
    let value: Int = try await subscriber.subscribe(to: channel) { subscription in
        _ = subscription.channels
        return 1
    }
    _ = value
    for await event in subscription.events() { _ = event }
    for await event in subscriber.events() { _ = event }
    _ = try await subscriber.ping()
    await subscription.unsubscribe()
}
