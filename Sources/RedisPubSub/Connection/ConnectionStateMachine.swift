/// Every decision that keeps one connection alive: connecting (resolving, trying each address in its share of the
/// connect timeout, rotating addresses across attempts), the handshake, ready, lost, retrying with backoff or giving
/// up, checking the health of a ready connection, closing gracefully or at once, closed.
///
/// A pure value: no locks, no hiredis, no clock reads (every event carries `now`), no system randomness (the jitter
/// comes from a generator seeded at creation). Events go in as mutating calls, and each returns the actions its
/// owner, ``ConnectionCore``, must carry out in order. Unit tests drive it directly.
struct ConnectionStateMachine: Sendable {
    typealias Instant = ContinuousClock.Instant

    /// What does not change over the connection's life.
    struct Settings: Hashable, Sendable {
        /// How the connection is named in errors (never with a password).
        var endpointDescription: String
        /// The address when the endpoint needs no name resolution (a numeric IP, a Unix socket); `nil` resolves first.
        var fixedAddress: ServerAddress?
        var connectTimeout: Duration
        /// Also the limit of a graceful close.
        var commandTimeout: Duration
        var reconnect: ReconnectPolicy
        var healthCheck: HealthCheck?
        var handshake: Handshake
        /// The connection speaks TLS (errors then hint at the other way round).
        var usesTLS = false
    }

    /// The timers the owner keeps, at most one of each; scheduling one replaces it.
    enum Timer: Hashable, Sendable, CaseIterable {
        /// The end of the current connect attempt.
        case attempt
        /// The end of the current address's share of the attempt.
        case address
        /// The end of the backoff before the next attempt.
        case retry
        /// The next health check.
        case health
        /// The end of a graceful close.
        case closing
    }

    /// What the owner does.
    enum Action: Hashable, Sendable {
        /// Resolve the endpoint's host name, then report with ``resolved(_:attempt:now:)``.
        case resolve(attempt: UInt64)
        /// Open a socket to the address (report ``openFailed(_:now:)`` if that fails at once, else
        /// ``socketConnected(now:)`` or ``socketClosed(_:now:)`` later).
        case open(ServerAddress)
        /// Write the handshake's commands; their replies go to ``handshakeReply(_:now:)``.
        case writeHandshake(Handshake)
        /// Close the current socket, if there is one; it reports nothing more.
        case closeSocket(RedisError)
        case schedule(Timer, at: Instant)
        case cancel(Timer)
        /// Send a PING; its reply (any reply) goes to ``healthPingAnswered(now:)``.
        case sendHealthPing
        /// Log a handshake step that did not take effect.
        case warn(String)
        /// Attempt number `attempt` starts after `delay` (an event for listeners).
        case reconnecting(attempt: Int, delay: Duration, lastError: RedisError?)
        /// Ready: resume those waiting, write what was submitted. `downtime` is `nil` for the first connection.
        case ready(downtime: Duration?)
        /// A ready connection was lost: fail what is in flight, tell listeners; a retry follows unless the policy
        /// says no.
        case connectionLost(RedisError)
        /// Closed for good: by `close()` (`nil`) or by this error. Fail everything that waits.
        case finish(RedisError?)
    }

    private struct Attempt: Hashable, Sendable {
        let id: UInt64
        let deadline: Instant
        /// In the order they are tried (rotated), once resolved.
        var addresses: [ServerAddress] = []
        var resolved = false
        /// The index in `addresses` being tried; -1 before the first.
        var current = -1
        /// Why the last address tried failed.
        var lastError: RedisError?
        /// The current address's TCP connect is done and its TLS handshake under way.
        var inTLSHandshake = false
    }

    private enum State: Hashable, Sendable {
        case idle
        /// Resolving (`resolved == false`) or opening `addresses[current]`.
        case connecting(Attempt)
        /// The socket is up; waiting for the reply of `handshake.steps[step]`.
        case handshaking(Attempt, step: Int)
        case ready(HealthCheck?)
        case waitingToRetry
        /// `close()` was called: in-flight commands finish (within the command timeout), then the socket closes.
        case closing(HealthCheck?)
        case closed
    }

    /// Which state the machine is in, without its details: a byte, cheap to read on the hot path (a reply's arrival
    /// asks whether it belongs to the handshake).
    enum Phase: UInt8, Hashable, Sendable {
        case idle, connecting, handshaking, ready, waitingToRetry, closing, closed
    }

    let settings: Settings
    private(set) var phase = Phase.idle
    private var state = State.idle {
        didSet {
            switch state {
            case .idle: phase = .idle
            case .connecting: phase = .connecting
            case .handshaking: phase = .handshaking
            case .ready: phase = .ready
            case .waitingToRetry: phase = .waitingToRetry
            case .closing: phase = .closing
            case .closed: phase = .closed
            }
        }
    }
    private var attempts: UInt64 = 0
    /// While the first connection is being made: when to give up.
    private var startupDeadline: Instant?
    private var everConnected = false
    private var failedAttempts = 0
    private var lastError: RedisError?
    private var lostAt: Instant?
    /// Where the next attempt starts in the resolved address list: the address that worked last, or the one after
    /// the one an attempt failed on.
    private var rotation = 0
    private var random: JitterRandom

    init(settings: Settings, seed: UInt64) {
        self.settings = settings
        self.random = JitterRandom(seed: seed)
    }

    // MARK: Questions the owner asks

    /// Replies now belong to the handshake, not to requests.
    var isHandshaking: Bool { phase == .handshaking }

    /// Commands may be written (ready, or closing while in-flight ones finish).
    var acceptsCommands: Bool { phase == .ready || phase == .closing }

    var isClosing: Bool { phase == .closing }

    var isClosed: Bool { phase == .closed }

    var isReady: Bool { phase == .ready }

    /// A `close()` now would end a connection that never was ready.
    var hasConnected: Bool { everConnected }

    /// Why the last attempt or connection failed, while reconnecting.
    var currentError: RedisError? { lastError }

    // MARK: Connecting

    /// `connect`: the first attempt. Attempts are retried with backoff until the connect timeout is up.
    mutating func start(now: Instant) -> [Action] {
        guard case .idle = state else { return [] }
        startupDeadline = now + settings.connectTimeout
        return startAttempt(now: now)
    }

    private mutating func startAttempt(now: Instant) -> [Action] {
        attempts += 1
        let deadline = min(startupDeadline ?? now + settings.connectTimeout, now + settings.connectTimeout)
        var attempt = Attempt(id: attempts, deadline: deadline)
        var actions: [Action] = [.schedule(.attempt, at: deadline)]
        if let fixed = settings.fixedAddress {
            attempt.addresses = [fixed]
            attempt.resolved = true
            actions += openNext(&attempt, now: now)
        } else {
            state = .connecting(attempt)
            actions.append(.resolve(attempt: attempt.id))
        }
        return actions
    }

    /// The name resolution of attempt `id` finished. A result for an earlier attempt is ignored.
    mutating func resolved(_ result: Result<[ServerAddress], RedisError>, attempt id: UInt64, now: Instant) -> [Action] {
        guard case .connecting(var attempt) = state, attempt.id == id, !attempt.resolved else { return [] }
        switch result {
        case .failure(let error):
            return attemptFailed(error, now: now)
        case .success(let addresses):
            guard !addresses.isEmpty else {
                return attemptFailed(RedisError(.nameResolutionFailed, "no address for \(settings.endpointDescription)"), now: now)
            }
            let start = rotation % addresses.count
            attempt.addresses = Array(addresses[start...] + addresses[..<start])
            attempt.resolved = true
            return openNext(&attempt, now: now)
        }
    }

    /// Tries the next address of the attempt, giving it an equal share of the time left; fails the attempt when
    /// none is left.
    private mutating func openNext(_ attempt: inout Attempt, now: Instant) -> [Action] {
        attempt.current += 1
        guard attempt.current < attempt.addresses.count else {
            return attemptFailed(
                attempt.lastError ?? RedisError(.connectionRefused, "no address to connect to"), now: now)
        }
        let left = attempt.addresses.count - attempt.current
        attempt.inTLSHandshake = false
        state = .connecting(attempt)
        var actions: [Action] = []
        if left > 1 {
            actions.append(.schedule(.address, at: now + (attempt.deadline - now) / left))
        } else {
            actions.append(.cancel(.address))  // the last one has what is left of the attempt
        }
        actions.append(.open(attempt.addresses[attempt.current]))
        return actions
    }

    /// Opening the socket failed at once (a refused loopback port, a missing socket file).
    mutating func openFailed(_ error: RedisError, now: Instant) -> [Action] {
        guard case .connecting(var attempt) = state, attempt.resolved else { return [] }
        attempt.lastError = error
        return openNext(&attempt, now: now)
    }

    /// The TCP connect is done and the TLS handshake begins (TLS connections only); ``socketConnected(now:)``
    /// follows when it completes. Only the error of a timeout depends on it.
    mutating func tlsHandshakeStarted(now: Instant) -> [Action] {
        guard case .connecting(var attempt) = state, attempt.resolved, attempt.current >= 0 else { return [] }
        attempt.inTLSHandshake = true
        state = .connecting(attempt)
        return []
    }

    /// A TLS handshake that timed out: a server that does not speak TLS on the port waits for more without a word.
    private func tlsHandshakeTimeout(with peer: String, after limit: String) -> RedisError {
        RedisError(
            .timeout,
            "the TLS handshake with \(peer) got no answer within \(limit): a port without TLS waits silently; is it the "
                + "server's tls-port?")
    }

    /// The socket is connected: the handshake begins.
    mutating func socketConnected(now: Instant) -> [Action] {
        guard case .connecting(let attempt) = state, attempt.resolved, attempt.current >= 0 else { return [] }
        state = .handshaking(attempt, step: 0)
        return [.cancel(.address), .writeHandshake(settings.handshake)]
    }

    /// The reply to the handshake step in progress.
    mutating func handshakeReply(_ reply: RedisValue, now: Instant) -> [Action] {
        guard case .handshaking(let attempt, let step) = state else { return [] }
        let steps = settings.handshake.steps
        var actions: [Action] = []
        switch Handshake.outcome(of: reply, to: steps[step]) {
        case .failed(let error):
            return attemptFailed(error, now: now)
        case .doneWithWarning(let warning):
            actions.append(.warn(warning))
        case .done:
            break
        }
        guard step + 1 == steps.count else {
            state = .handshaking(attempt, step: step + 1)
            return actions
        }
        return actions + becomeReady(attempt, now: now)
    }

    private mutating func becomeReady(_ attempt: Attempt, now: Instant) -> [Action] {
        if !attempt.addresses.isEmpty {
            rotation = (rotation + attempt.current) % attempt.addresses.count  // start with this one next time
        }
        failedAttempts = 0
        lastError = nil
        let downtime: Duration? = everConnected ? lostAt.map { now - $0 } ?? .zero : nil
        everConnected = true
        startupDeadline = nil
        state = .ready(settings.healthCheck)
        var actions: [Action] = [.cancel(.attempt), .ready(downtime: downtime)]
        if let health = settings.healthCheck {
            actions.append(.schedule(.health, at: health.firstCheck(now: now)))
        }
        return actions
    }

    /// One attempt failed before the connection was ready: retry with backoff, or give up.
    private mutating func attemptFailed(_ error: RedisError, now: Instant) -> [Action] {
        var actions: [Action] = [.cancel(.attempt), .cancel(.address), .closeSocket(error)]
        // An attempt cut short by the clock says less than the failure before it: report that one when giving up.
        let cause = error.code == .timeout ? (lastError ?? error) : error
        lastError = error
        failedAttempts += 1
        rotation += 1
        guard Self.isRetryable(error) else { return actions + finish(error) }
        guard settings.reconnect.allowsAttempt(after: failedAttempts) else { return actions + finish(cause) }
        let delay = settings.reconnect.delay(attempt: failedAttempts - 1, using: &random)
        if let startupDeadline, now + delay >= startupDeadline {
            return actions + finish(cause)  // the start-up time is up
        }
        state = .waitingToRetry
        actions.append(.reconnecting(attempt: failedAttempts + 1, delay: delay, lastError: error))
        actions.append(.schedule(.retry, at: now + delay))
        return actions
    }

    /// Errors that waiting cannot fix end the connection instead of being retried.
    static func isRetryable(_ error: RedisError) -> Bool {
        switch error.code {
        case .authenticationFailed, .invalidConfiguration, .permissionDenied, .invalidArgument: false
        default: true
        }
    }

    // MARK: Losing the connection

    /// The current socket closed by itself (refused, reset, end of stream, protocol error).
    mutating func socketClosed(_ error: RedisError, now: Instant) -> [Action] {
        switch state {
        case .connecting(var attempt) where attempt.resolved && attempt.current >= 0:
            attempt.lastError = error
            return openNext(&attempt, now: now)
        case .handshaking(_, let step):
            guard step == 0, !settings.usesTLS, error.code == .connectionClosed else { return attemptFailed(error, now: now) }
            // Closed before any reply: what a TLS port does to a client that does not speak TLS.
            return attemptFailed(
                RedisError(
                    .connectionClosed,
                    "\(error.message), before any reply to the handshake: if the port speaks TLS, use rediss://"),
                now: now)
        case .ready:
            return lost(error, now: now)
        case .closing:
            return finish(nil)
        case .idle, .connecting, .waitingToRetry, .closed:
            return []
        }
    }

    private mutating func lost(_ error: RedisError, now: Instant) -> [Action] {
        lostAt = now
        lastError = error
        failedAttempts = 0
        var actions: [Action] = [.cancel(.health), .connectionLost(error)]
        guard settings.reconnect.allowsAttempt(after: 0) else { return actions + finish(error) }
        let delay = settings.reconnect.delay(attempt: 0, using: &random)
        state = .waitingToRetry
        actions.append(.reconnecting(attempt: 1, delay: delay, lastError: error))
        actions.append(.schedule(.retry, at: now + delay))
        return actions
    }

    /// The connection is alive in name only (silent past a deadline): close it, and reconnect unless closing.
    private mutating func declareDead(_ error: RedisError, now: Instant) -> [Action] {
        switch state {
        case .ready: return [.closeSocket(error)] + lost(error, now: now)
        case .closing: return finish(nil)
        default: return []
        }
    }

    /// A command written at `writtenAt` is past its deadline, and the connection last read anything at `lastRead`.
    /// Silent ever since the command was written, the server is frozen, overloaded or cut off: the connection is
    /// declared dead and replaced. The owner asks before it fails the overdue commands with a timeout, so that they
    /// too fail with ``RedisError/Code/connectionClosed``, which ``PublishRetry`` sends again.
    mutating func commandOverdue(writtenAt: Instant, lastRead: Instant, now: Instant) -> [Action] {
        guard acceptsCommands, lastRead < writtenAt else { return [] }
        return declareDead(
            RedisError(
                .timeout,
                "no reply and nothing else from the server for \(now - writtenAt) (past the command's deadline): "
                    + "the connection is replaced"),
            now: now)
    }

    // MARK: Timers and the health check

    /// A timer the owner scheduled fired; `lastRead` is when the connection last read anything, `busyUntil` the
    /// latest deadline of the commands waiting for replies (if any).
    mutating func timerFired(_ timer: Timer, now: Instant, lastRead: Instant, busyUntil: Instant? = nil) -> [Action] {
        switch (timer, state) {
        case (.attempt, .connecting(let attempt)):
            return attemptFailed(
                attempt.inTLSHandshake
                    ? tlsHandshakeTimeout(with: settings.endpointDescription, after: "the connect timeout of \(settings.connectTimeout)")
                    : RedisError(.timeout, "connecting to \(settings.endpointDescription) timed out after \(settings.connectTimeout)"),
                now: now)
        case (.attempt, .handshaking(_, let step)):
            let name = settings.handshake.steps[step].name
            return attemptFailed(
                RedisError(.timeout, "\(name) got no reply within the connect timeout of \(settings.connectTimeout)"),
                now: now)
        case (.address, .connecting(var attempt)) where attempt.resolved && attempt.current >= 0:
            let address = attempt.addresses[attempt.current]
            let error = attempt.inTLSHandshake
                ? tlsHandshakeTimeout(with: "\(address)", after: "its share of the connect timeout")
                : RedisError(.timeout, "connecting to \(address) timed out (its share of the connect timeout)")
            attempt.lastError = error
            return [.closeSocket(error)] + openNext(&attempt, now: now)
        case (.retry, .waitingToRetry):
            return startAttempt(now: now)
        case (.health, .ready), (.health, .closing):
            return updatingHealth { machine, health in
                machine.healthCheckDue(&health, now: now, lastRead: lastRead, busyUntil: busyUntil)
            }
        case (.closing, .closing):
            return finish(nil)
        default:
            return []  // a timer of a state already left
        }
    }

    private mutating func healthCheckDue(
        _ health: inout HealthCheck, now: Instant, lastRead: Instant, busyUntil: Instant?
    ) -> [Action] {
        switch health.due(now: now, lastRead: lastRead, busyUntil: busyUntil) {
        case .ping(let checkAt):
            return [.sendHealthPing, .schedule(.health, at: checkAt)]
        case .wait(let checkAt):
            return [.schedule(.health, at: checkAt)]
        case .dead(let silence):
            return declareDead(
                RedisError(
                    .timeout,
                    "health check: no reply to PING, and nothing else, within \(silence); the connection is replaced"),
                now: now)
        }
    }

    /// The health check's PING got a reply: any reply, an error reply included, proves the connection alive.
    mutating func healthPingAnswered(now: Instant) -> [Action] {
        updatingHealth { _, health in health.answered(now: now).map { [.schedule(.health, at: $0)] } ?? [] }
    }

    /// Runs `body` on the health check of a ready or closing connection (that has one) and keeps what it made of it;
    /// does nothing in any other state. If `body` ends the connection, the state it left stays.
    private mutating func updatingHealth(_ body: (inout Self, inout HealthCheck) -> [Action]) -> [Action] {
        var health: HealthCheck
        let closing: Bool
        switch state {
        case .ready(let check?): (health, closing) = (check, false)
        case .closing(let check?): (health, closing) = (check, true)
        default: return []
        }
        let actions = body(&self, &health)
        switch phase {
        case .ready where !closing: state = .ready(health)
        case .closing where closing: state = .closing(health)
        default: break
        }
        return actions
    }

    // MARK: Closing

    /// `close()`: a ready connection lets its in-flight commands finish (`drained` says none is left), for at most
    /// the command timeout; any other state ends at once.
    mutating func closeRequested(drained: Bool, now: Instant) -> [Action] {
        switch state {
        case .idle, .connecting, .handshaking, .waitingToRetry:
            return finish(everConnected ? nil : RedisError(.connectionClosed, "the connection was closed while connecting"))
        case .ready(let health):
            if drained { return finish(nil) }
            state = .closing(health)
            return [.schedule(.closing, at: now + settings.commandTimeout)]
        case .closing, .closed:
            return []
        }
    }

    /// While closing, the last in-flight command got its reply (or timed out).
    mutating func drained() -> [Action] {
        guard case .closing = state else { return [] }
        return finish(nil)
    }

    /// A close that does not wait: cancellation of `close()` or of a service's `run()`.
    mutating func forceClose() -> [Action] {
        switch state {
        case .closed: return []
        case .idle, .connecting, .handshaking, .waitingToRetry:
            return finish(everConnected ? nil : RedisError(.connectionClosed, "the connection was closed while connecting"))
        case .ready, .closing:
            return finish(nil)
        }
    }

    /// The end: `nil` for `close()`, else the error no retry can fix.
    private mutating func finish(_ error: RedisError?) -> [Action] {
        state = .closed
        var actions = Timer.allCases.map(Action.cancel)
        actions.append(.closeSocket(error ?? RedisError(.connectionClosed, "the connection was closed by close()")))
        actions.append(.finish(error))
        return actions
    }
}

/// The backoff's jitter: SplitMix64, seeded from the system's generator by the owner (or by a test, to replay).
struct JitterRandom: RandomNumberGenerator, Hashable, Sendable {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
