#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// How a connection comes back after it was lost: exponential backoff with full jitter.
///
/// The n-th retry (from 0) waits a random time between zero and `min(maximumDelay, initialDelay * 2^n)`, so many
/// clients that lost the same server do not come back in lockstep. The defaults retry forever and reconnect within
/// about half a second of the server accepting connections again.
public struct ReconnectPolicy: Hashable, Sendable {
    /// The cap of the first retry's random delay. Default: 20 ms.
    public var initialDelay: Duration
    /// The largest cap, reached after a few doublings. Default: 500 ms.
    public var maximumDelay: Duration
    /// How many consecutive failed attempts end the connection for good; `nil` retries forever (the default).
    /// 0 disables reconnecting.
    public var maximumAttempts: Int?

    /// Creates a policy.
    public init(initialDelay: Duration = .milliseconds(20), maximumDelay: Duration = .milliseconds(500), maximumAttempts: Int? = nil) {
        self.initialDelay = initialDelay
        self.maximumDelay = maximumDelay
        self.maximumAttempts = maximumAttempts
    }

    /// Retry forever: 20 ms doubling up to 500 ms, fully jittered.
    public static let `default` = ReconnectPolicy()

    /// Never reconnect: a lost connection stays closed.
    public static let disabled = ReconnectPolicy(maximumAttempts: 0)

    /// The delay before retry number `attempt` (0 for the first), drawn from `generator`.
    func delay(attempt: Int, using generator: inout some RandomNumberGenerator) -> Duration {
        let initial = Double(initialDelay.components.seconds) + Double(initialDelay.components.attoseconds) * 1e-18
        let maximum = Double(maximumDelay.components.seconds) + Double(maximumDelay.components.attoseconds) * 1e-18
        let cap = min(maximum, initial * pow2(min(attempt, 62)))
        guard cap > 0 else { return .zero }
        return .nanoseconds(Int64(Double.random(in: 0...cap, using: &generator) * 1e9))
    }

    private func pow2(_ exponent: Int) -> Double { Double(UInt64(1) << UInt64(exponent)) }

    /// Whether another attempt is allowed after `failures` consecutive failures.
    func allowsAttempt(after failures: Int) -> Bool {
        guard let maximumAttempts else { return true }
        return failures < maximumAttempts
    }
}

/// A change in a connection's state, for ``RedisConnection/events``, ``Publisher/events`` and
/// ``Subscriber/events``.
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

/// Sends events to every current listener; each listener is an `AsyncStream` keeping its newest 256 events.
/// Events are rare (connection changes), so a stream per listener costs nothing that matters.
final class EventBroadcaster<Event: Sendable>: Sendable {
    private struct State {
        var listeners: [Int: AsyncStream<Event>.Continuation] = [:]
        var nextID = 0
        var finished = false
    }
    private let state = Locked(State())

    /// A new listener's stream: the events sent from now on.
    func stream() -> AsyncStream<Event> {
        let (stream, continuation) = AsyncStream.makeStream(of: Event.self, bufferingPolicy: .bufferingNewest(256))
        let id = state.withLock { state -> Int? in
            guard !state.finished else { return nil }
            state.nextID += 1
            state.listeners[state.nextID] = continuation
            return state.nextID
        }
        guard let id else {
            continuation.finish()
            return stream
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.listeners.removeValue(forKey: id) }
        }
        return stream
    }

    func send(_ event: Event) {
        let listeners = state.withLock { Array($0.listeners.values) }
        for listener in listeners { listener.yield(event) }
    }

    /// Ends every stream, present and future.
    func finish() {
        let listeners = state.withLock { state -> [AsyncStream<Event>.Continuation] in
            state.finished = true
            defer { state.listeners = [:] }
            return Array(state.listeners.values)
        }
        for listener in listeners { listener.finish() }
    }
}
