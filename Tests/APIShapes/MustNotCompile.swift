// Type-checked by scripts/check-api-shapes.sh: every line marked `// error` must fail to compile, and no other line
// may. Each is a call that once compiled and silently did something else than it says.
import Foundation
import RedisPubSub

struct Note: Codable { let id: Int }

func traps(publisher: Publisher, subscriber: Subscriber, connection: RedisConnection) async throws {
    let optional: String? = "x"
    try await publisher.publish(42, to: "ch")  // error: an Int is not a payload (was JSON "42")
    try await publisher.publish(optional, to: "ch")  // error: an optional is not a payload (was JSON)
    try await publisher.publish(Note(id: 1), to: "ch")  // error: a struct is JSON only through publish(json:)
    _ = try await subscriber.subscribe(to: 42)  // error: an integer is not a channel name (was "42")
    _ = try await subscriber.subscribe(to: [128, 129] as [Int])  // error: integers are not names (was "128", "129")
    try await publisher.publish("x", to: 7)  // error: an integer is not a channel name
    _ = try await publisher.numberOfSubscribers(["ch"])  // error: one name per operation: connection.pubsubNumberOfSubscribers
    _ = try await publisher.channels(matching: "*")  // error: one name per operation: connection.pubsubChannels
    let counts = try await connection.pubsubNumberOfSubscribers(["ch"])
    let _: [String: Int] = counts  // error: results are keyed by exact bytes (RedisName), not lossy text
    for try await _ in subscriber.subscribe(to: "ch").decoded(as: Note.self, onFailure: { _ in }) {}  // error: failures are elements
    for await _ in subscriber.events {}  // error: events() is a method: each call a new sequence, current state first
}
