#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// A change in a subscription's delivery: when it went deaf, and when it heard again.
///
/// Redis Pub/Sub delivers at most once: messages published between ``disconnected(at:cause:)`` and the following
/// ``resubscribed(at:gap:)`` are lost to this subscription. The times are wall-clock, to compare with timestamps the
/// publishers put in their messages.
public enum SubscriptionEvent: Sendable, Hashable, CustomStringConvertible {
    /// Every channel of the subscription was confirmed by the server for the first time.
    case subscribed(at: Date)
    /// The connection was lost at this time; nothing is received until resubscribed.
    case disconnected(at: Date, cause: RedisError)
    /// Every channel of the subscription is confirmed by the server again; `gap` is how long it was not subscribed.
    case resubscribed(at: Date, gap: Duration)

    /// A one-line account for logs.
    public var description: String {
        switch self {
        case .subscribed: "subscribed"
        case .disconnected(_, let cause): "disconnected: \(cause)"
        case .resubscribed(_, let gap): "resubscribed after a gap of \(gap)"
        }
    }
}
