import DequeModule

/// The commands written on a connection and not yet answered, in the order they were written.
///
/// Redis answers in order, so the head is always the next reply's owner. A waiter that timed out or was
/// cancelled keeps its slot (its reply is still coming) but no longer has anyone to deliver to: its late reply is
/// discarded. The health check's PING is a probe: it has no deadline of its own (the health check judges its
/// silence), so it is never abandoned and its PONG always reaches it, however late. Each slot also carries what it costs against the connection's bound on outstanding work; the queue
/// adds up what answered or removed slots give back. A pure value: the connection drives it and carries out what
/// it returns.
struct RequestQueue<Waiter> {
    private struct Slot {
        var waiter: Waiter?
        /// `nil` for a probe.
        let deadline: ContinuousClock.Instant?
        let writtenAt: ContinuousClock.Instant
        let cost: CommandCost
    }

    /// What to do with the reply that just arrived.
    enum Owner {
        /// Deliver it to this waiter.
        case waiter(Waiter)
        /// Its waiter gave up (timeout or cancellation): drop it.
        case abandoned
        /// Nothing was asked: the server sent something unsolicited.
        case none
    }

    private var slots = Deque<Slot>()
    /// The leading slots already expired: the timeout scan starts after them.
    private var expiredPrefix = 0
    /// When the newest of those was written.
    private var newestExpiredWrittenAt: ContinuousClock.Instant?
    /// Slots whose waiter can still be delivered to.
    private(set) var liveCount = 0
    /// The cost of the slots answered or removed since ``takeReleased()`` last ran.
    private var released = CommandCost.none

    /// Number of replies still expected.
    var count: Int { slots.count }
    var isEmpty: Bool { slots.isEmpty }

    /// The first deadline not yet expired. Deadlines grow with the order of writing (one timeout per connection),
    /// so this is the next moment a waiter can time out. (The scans below step over probes: there is at most one.)
    var nextDeadline: ContinuousClock.Instant? {
        slots[expiredPrefix...].first(where: { $0.deadline != nil })?.deadline
    }

    /// When the newest command whose deadline has passed at `now` was written: if nothing was read since, the server
    /// has been silent for at least a whole command timeout.
    func newestOverdue(now: ContinuousClock.Instant) -> ContinuousClock.Instant? {
        var newest = newestExpiredWrittenAt
        var index = expiredPrefix
        while index < slots.count {
            if let deadline = slots[index].deadline {
                guard deadline <= now else { break }
                newest = slots[index].writtenAt
            }
            index += 1
        }
        return newest
    }

    /// The latest deadline of the commands written: until then, some command may still be answered in time.
    var latestDeadline: ContinuousClock.Instant? {
        slots.last(where: { $0.deadline != nil })?.deadline
    }

    /// Records a written command.
    mutating func append(
        _ waiter: Waiter,
        deadline: ContinuousClock.Instant,
        writtenAt: ContinuousClock.Instant,
        cost: CommandCost = .none
    ) {
        slots.append(Slot(waiter: waiter, deadline: deadline, writtenAt: writtenAt, cost: cost))
        liveCount += 1
    }

    /// Records a written probe: a command without a deadline, whose waiter stays live until its reply comes or the
    /// queue is emptied.
    mutating func appendProbe(_ waiter: Waiter, writtenAt: ContinuousClock.Instant) {
        slots.append(Slot(waiter: waiter, deadline: nil, writtenAt: writtenAt, cost: .none))
        liveCount += 1
    }

    /// The waiter the next reply goes to, if it is still live.
    func peek() -> Waiter? {
        slots.first?.waiter
    }

    /// Takes the owner of the reply that just arrived.
    mutating func popOwner() -> Owner {
        guard let slot = slots.popFirst() else { return .none }
        if expiredPrefix > 0 {
            expiredPrefix -= 1
            if expiredPrefix == 0 { newestExpiredWrittenAt = nil }
        }
        released.commands += slot.cost.commands
        released.bytes += slot.cost.bytes
        guard let waiter = slot.waiter else { return .abandoned }
        liveCount -= 1
        return .waiter(waiter)
    }

    /// Takes the waiters whose deadline is at or before `now`, each with the time it was allowed; their slots stay,
    /// abandoned.
    mutating func expire(now: ContinuousClock.Instant) -> [(waiter: Waiter, allowed: Duration)] {
        var expired: [(waiter: Waiter, allowed: Duration)] = []
        while expiredPrefix < slots.count {
            guard let deadline = slots[expiredPrefix].deadline else {
                expiredPrefix += 1  // a probe never expires: stepped over, its waiter kept
                continue
            }
            guard deadline <= now else { break }
            if let waiter = slots[expiredPrefix].waiter {
                expired.append((waiter, deadline - slots[expiredPrefix].writtenAt))
                slots[expiredPrefix].waiter = nil
                liveCount -= 1
            }
            newestExpiredWrittenAt = slots[expiredPrefix].writtenAt
            expiredPrefix += 1
        }
        return expired
    }

    /// Empties the queue (the connection is gone) and returns every waiter still live.
    mutating func removeAll() -> [Waiter] {
        var live: [Waiter] = []
        for slot in slots {
            released.commands += slot.cost.commands
            released.bytes += slot.cost.bytes
            if let waiter = slot.waiter { live.append(waiter) }
        }
        slots.removeAll()
        expiredPrefix = 0
        newestExpiredWrittenAt = nil
        liveCount = 0
        return live
    }

    /// The cost given back since ``takeReleased()`` last ran, without taking it.
    var releasedSoFar: CommandCost { released }

    /// The cost given back since the last call, for the connection's bound on outstanding work.
    mutating func takeReleased() -> CommandCost {
        defer { released = .none }
        return released
    }
}

/// What written commands count against a connection's bound on outstanding work (``CommandInbox``).
struct CommandCost: Hashable, Sendable {
    var commands: Int
    var bytes: Int
    /// Commands the package sends for itself, which the bound does not count.
    static let none = CommandCost(commands: 0, bytes: 0)
}
