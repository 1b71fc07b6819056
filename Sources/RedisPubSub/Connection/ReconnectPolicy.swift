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

    /// The delay before retry number `attempt` (0 for the first), drawn from `generator`. Any policy works, however
    /// large its delays: the cap saturates instead of overflowing.
    func delay(attempt: Int, using generator: inout some RandomNumberGenerator) -> Duration {
        let initial = Double(initialDelay.components.seconds) + Double(initialDelay.components.attoseconds) * 1e-18
        let maximum = Double(maximumDelay.components.seconds) + Double(maximumDelay.components.attoseconds) * 1e-18
        // About 31 years: beyond it a wait is "forever" anyway, and nanoseconds still fit an Int64.
        let cap = min(maximum, initial * pow2(min(max(attempt, 0), 62)), 1e9)
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

