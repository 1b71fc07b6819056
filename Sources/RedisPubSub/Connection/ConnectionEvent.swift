#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// A change in a connection's state, for ``RedisConnection/events()``, ``Publisher/events()`` and
/// ``Subscriber/events()``.
public enum ConnectionEvent: Sendable, Hashable, CustomStringConvertible {
    /// The first connection (and handshake) succeeded.
    case connected(at: Date)
    /// The connection was lost: commands in flight failed with `cause`, and messages published from now on are lost
    /// until ``reconnected(at:downtime:)``.
    case disconnected(at: Date, cause: RedisError)
    /// Attempt number `attempt` (from 1) will start after `delay`; `lastError` is why the previous one failed, if one did.
    case reconnecting(attempt: Int, delay: Duration, lastError: RedisError?)
    /// Connected again after `downtime`; a Subscriber then resubscribes (each subscription reports its own
    /// ``SubscriptionEvent/resubscribed(at:gap:)``).
    case reconnected(at: Date, downtime: Duration)
    /// Closed for good: by `close()` (`nil`), or by an error no retry can fix (for example a changed password) or
    /// after the policy's maximum attempts.
    case closed(error: RedisError?)

    /// A one-line account for logs.
    public var description: String {
        switch self {
        case .connected: "connected"
        case .disconnected(_, let cause): "disconnected: \(cause)"
        case .reconnecting(let attempt, let delay, let error):
            "reconnecting (attempt \(attempt) in \(delay))" + (error.map { " after: \($0)" } ?? "")
        case .reconnected(_, let downtime): "reconnected after \(downtime)"
        case .closed(let error): "closed" + (error.map { ": \($0)" } ?? "")
        }
    }
}
