/// What a subscription does when messages arrive faster than its consumer takes them.
///
/// Pub/Sub cannot slow the publisher down: a full buffer must drop something. The limit counts messages received and
/// not yet handed to the consumer (the consumer takes them in batches). Not reading at all just moves the backlog to
/// the server, which disconnects the client at its `client-output-buffer-limit pubsub`.
public struct BufferingPolicy: Sendable, Hashable, CustomStringConvertible {
    enum Base: Hashable, Sendable {
        case unbounded
        case newest(Int)
        case oldest(Int)
    }
    let base: Base

    /// Keeps the newest `limit` messages: when full, the oldest waiting message is dropped.
    public static func bufferingNewest(_ limit: Int) -> BufferingPolicy {
        precondition(limit > 0, "BufferingPolicy: the limit must be positive")
        return BufferingPolicy(base: .newest(limit))
    }

    /// Keeps the oldest `limit` messages: when full, arriving messages are dropped.
    public static func bufferingOldest(_ limit: Int) -> BufferingPolicy {
        precondition(limit > 0, "BufferingPolicy: the limit must be positive")
        return BufferingPolicy(base: .oldest(limit))
    }

    /// Never drops; memory grows as long as the consumer falls behind.
    public static let unbounded = BufferingPolicy(base: .unbounded)

    /// The default: ``bufferingNewest(_:)`` with 10,000 messages.
    public static let `default` = BufferingPolicy.bufferingNewest(10_000)

    /// E.g. `bufferingNewest(10000)`.
    public var description: String {
        switch base {
        case .unbounded: "unbounded"
        case .newest(let limit): "bufferingNewest(\(limit))"
        case .oldest(let limit): "bufferingOldest(\(limit))"
        }
    }
}
