/// Whether a ready connection is alive, judged from when it last read anything: after `interval` of silence it
/// sends a PING, and if it then stays silent for `timeout` more it is dead, unless a command written after the PING
/// may still be answered in time (then that command's timeout judges). Any bytes read count as life (a PONG
/// queued behind a large reply is not late while that reply streams in), and any reply to the PING ends the check,
/// an error reply (`-BUSY`, `-LOADING`, `-NOPERM`) included. A pure value: the state machine holds it.
struct HealthCheck: Hashable, Sendable {
    /// How long the connection may be silent before a PING is sent.
    let interval: Duration
    /// How long it may stay silent after the PING.
    let timeout: Duration
    /// When the PING in flight was sent, if one is.
    private(set) var pingSentAt: ContinuousClock.Instant?

    init(interval: Duration, timeout: Duration) {
        self.interval = interval
        self.timeout = timeout
    }

    /// What the owner does when the check's timer fires.
    enum Decision: Hashable, Sendable {
        /// Send a PING, and look again at `checkAt`.
        case ping(checkAt: ContinuousClock.Instant)
        /// Nothing yet: look again at `checkAt`.
        case wait(checkAt: ContinuousClock.Instant)
        /// Silent for `silence` since the PING: the connection is dead.
        case dead(silence: Duration)
    }

    /// When to look first, on a connection that just became ready at `now`.
    func firstCheck(now: ContinuousClock.Instant) -> ContinuousClock.Instant { now + interval }

    /// The timer fired at `now`; the connection last read anything at `lastRead`, and until `busyUntil` a command
    /// written on it (not a health-check PING) may still be answered in time. A busy connection is not pinged: the PING would wait behind a
    /// command that may rightly take longer than the health check's timeout (a slow script), and a silent server is
    /// caught by the command's own timeout instead.
    mutating func due(
        now: ContinuousClock.Instant,
        lastRead: ContinuousClock.Instant,
        busyUntil: ContinuousClock.Instant? = nil
    ) -> Decision {
        if let sent = pingSentAt {
            let since = max(sent, lastRead)
            guard now - since >= timeout else { return .wait(checkAt: since + timeout) }
            // A command written after the PING may still be answered in time (the PING went out while the
            // connection was idle, and Redis writes the PONG only after running a slow command read with it): the
            // connection is busy, and that command's own timeout judges the silence. `busyUntil` never counts the
            // health check's own PINGs, or a frozen server's idle connection would look busy.
            if let busyUntil, busyUntil > now { return .wait(checkAt: min(busyUntil, now + interval)) }
            return .dead(silence: now - sent)
        }
        // Busy: look again within an interval (the command may be answered long before its deadline).
        if let busyUntil, busyUntil > now { return .wait(checkAt: max(lastRead + interval, min(busyUntil, now + interval))) }
        guard now - lastRead >= interval else { return .wait(checkAt: lastRead + interval) }
        pingSentAt = now
        return .ping(checkAt: now + timeout)
    }

    /// The PING got a reply (any reply) at `now`. Returns when to look next.
    mutating func answered(now: ContinuousClock.Instant) -> ContinuousClock.Instant? {
        guard pingSentAt != nil else { return nil }
        pingSentAt = nil
        return now + interval
    }
}
