import DequeModule

/// The commands written on a connection and not yet answered, in the order they were written.
///
/// Redis answers in order, so the head is always the next reply's owner. A waiter that timed out or was
/// cancelled keeps its slot (its reply is still coming) but no longer has anyone to deliver to: its late reply is
/// discarded. A pure value: the connection drives it and carries out what it returns.
struct RequestQueue<Waiter> {
    private struct Slot {
        var waiter: Waiter?
        let deadline: ContinuousClock.Instant
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
    /// Slots whose waiter can still be delivered to.
    private(set) var liveCount = 0

    /// Number of replies still expected.
    var count: Int { slots.count }
    var isEmpty: Bool { slots.isEmpty }

    /// The first deadline not yet expired. Deadlines grow with the order of writing (one timeout per connection),
    /// so this is the next moment a waiter can time out.
    var nextDeadline: ContinuousClock.Instant? {
        expiredPrefix < slots.count ? slots[expiredPrefix].deadline : nil
    }

    /// Records a written command.
    mutating func append(_ waiter: Waiter, deadline: ContinuousClock.Instant) {
        slots.append(Slot(waiter: waiter, deadline: deadline))
        liveCount += 1
    }

    /// The waiter the next reply goes to, if it is still live.
    func peek() -> Waiter? {
        slots.first?.waiter
    }

    /// Takes the owner of the reply that just arrived.
    mutating func popOwner() -> Owner {
        guard let slot = slots.popFirst() else { return .none }
        if expiredPrefix > 0 { expiredPrefix -= 1 }
        guard let waiter = slot.waiter else { return .abandoned }
        liveCount -= 1
        return .waiter(waiter)
    }

    /// Takes the waiters whose deadline is at or before `now`; their slots stay, abandoned.
    mutating func expire(now: ContinuousClock.Instant) -> [Waiter] {
        var expired: [Waiter] = []
        while expiredPrefix < slots.count, slots[expiredPrefix].deadline <= now {
            if let waiter = slots[expiredPrefix].waiter {
                expired.append(waiter)
                slots[expiredPrefix].waiter = nil
                liveCount -= 1
            }
            expiredPrefix += 1
        }
        return expired
    }

    /// Empties the queue (the connection is gone) and returns every waiter still live.
    mutating func removeAll() -> [Waiter] {
        let live = slots.compactMap(\.waiter)
        slots.removeAll()
        expiredPrefix = 0
        liveCount = 0
        return live
    }
}
