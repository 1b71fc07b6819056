import Testing
@testable import RedisPubSub

@Suite("RequestQueue: matching replies to callers")
struct RequestQueueTests {
    let t0 = ContinuousClock.now

    /// The waiter `owner` names, or `nil` for an abandoned or missing owner.
    func waiter(_ owner: RequestQueue<Int>.Owner) -> Int? {
        if case .waiter(let id) = owner { id } else { nil }
    }

    func isAbandoned(_ owner: RequestQueue<Int>.Owner) -> Bool {
        if case .abandoned = owner { true } else { false }
    }

    @Test func repliesGoToWaitersInOrder() {
        var queue = RequestQueue<Int>()
        for id in 1...3 { queue.append(id, deadline: t0 + .seconds(id), writtenAt: t0) }
        #expect([queue.popOwner(), queue.popOwner(), queue.popOwner()].map(waiter) == [1, 2, 3])
        if case .none = queue.popOwner() {} else { Issue.record("a reply nobody asked for found an owner") }
        #expect(queue.isEmpty)
    }

    @Test func expiredWaitersKeepTheirSlotSoLateRepliesAreDropped() {
        var queue = RequestQueue<Int>()
        queue.append(1, deadline: t0 + .seconds(1), writtenAt: t0)
        queue.append(2, deadline: t0 + .seconds(2), writtenAt: t0)
        queue.append(3, deadline: t0 + .seconds(3), writtenAt: t0)
        #expect(queue.expire(now: t0 + .milliseconds(2500)).map(\.waiter) == [1, 2])
        #expect(queue.liveCount == 1)
        #expect(queue.nextDeadline == t0 + .seconds(3))
        // The late replies of 1 and 2 arrive: they must not reach 3.
        #expect(isAbandoned(queue.popOwner()))
        #expect(isAbandoned(queue.popOwner()))
        #expect(waiter(queue.popOwner()) == 3)
    }

    @Test func anExpiredWaiterComesWithTheTimeItWasAllowed() {
        var queue = RequestQueue<Int>()
        queue.append(1, deadline: t0 + .seconds(3), writtenAt: t0 + .seconds(1))
        let expired = queue.expire(now: t0 + .seconds(3))
        #expect(expired.map(\.waiter) == [1] && expired.map(\.allowed) == [.seconds(2)])
    }

    @Test func expiringTwiceTakesNothingTwice() {
        var queue = RequestQueue<Int>()
        queue.append(1, deadline: t0, writtenAt: t0)
        #expect(queue.expire(now: t0).map(\.waiter) == [1])
        #expect(queue.expire(now: t0 + .seconds(10)).map(\.waiter) == [])
        #expect(queue.nextDeadline == nil)
        #expect(queue.count == 1)
    }

    @Test func poppingAdjustsTheExpiredPrefix() {
        var queue = RequestQueue<Int>()
        queue.append(1, deadline: t0, writtenAt: t0)
        queue.append(2, deadline: t0 + .seconds(5), writtenAt: t0)
        _ = queue.expire(now: t0)
        _ = queue.popOwner()  // 1's late reply
        queue.append(3, deadline: t0 + .seconds(6), writtenAt: t0)
        #expect(queue.expire(now: t0 + .seconds(5)).map(\.waiter) == [2])
        #expect(queue.nextDeadline == t0 + .seconds(6))
    }

    @Test func removeAllReturnsOnlyLiveWaiters() {
        var queue = RequestQueue<Int>()
        queue.append(1, deadline: t0, writtenAt: t0)
        queue.append(2, deadline: t0 + .seconds(1), writtenAt: t0)
        _ = queue.expire(now: t0)
        #expect(queue.removeAll() == [2])
        #expect(queue.isEmpty && queue.liveCount == 0 && queue.nextDeadline == nil)
    }

    @Test func costsComeBackWhenRepliesArriveOrTheQueueEmpties() {
        var queue = RequestQueue<Int>()
        queue.append(1, deadline: t0, writtenAt: t0, cost: CommandCost(commands: 1, bytes: 0))
        queue.append(1, deadline: t0, writtenAt: t0, cost: CommandCost(commands: 1, bytes: 100))
        queue.append(2, deadline: t0, writtenAt: t0)  // the package's own: free
        queue.append(3, deadline: t0, writtenAt: t0, cost: CommandCost(commands: 1, bytes: 7))
        #expect(queue.takeReleased() == .none)
        _ = queue.popOwner()
        _ = queue.popOwner()
        #expect(queue.takeReleased() == CommandCost(commands: 2, bytes: 100))
        #expect(queue.takeReleased() == .none)
        _ = queue.expire(now: t0)  // expiring gives nothing back: the slots still wait for their replies
        #expect(queue.takeReleased() == .none)
        _ = queue.removeAll()
        #expect(queue.takeReleased() == CommandCost(commands: 1, bytes: 7))
    }

    @Test func theNewestOverdueSlotIsJudgedNotOnlyTheOldest() {
        var queue = RequestQueue<Int>()
        #expect(queue.newestOverdue(now: t0) == nil && queue.latestDeadline == nil)
        queue.append(1, deadline: t0 + .seconds(5), writtenAt: t0)
        queue.append(2, deadline: t0 + .seconds(7), writtenAt: t0 + .seconds(2))
        queue.append(3, deadline: t0 + .seconds(9), writtenAt: t0 + .seconds(4))
        #expect(queue.latestDeadline == t0 + .seconds(9))
        #expect(queue.newestOverdue(now: t0 + .seconds(4)) == nil)
        #expect(queue.newestOverdue(now: t0 + .seconds(7)) == t0 + .seconds(2))
        _ = queue.expire(now: t0 + .seconds(7))
        // The expired ones are remembered; the scan goes on from there.
        #expect(queue.newestOverdue(now: t0 + .seconds(8)) == t0 + .seconds(2))
        #expect(queue.newestOverdue(now: t0 + .seconds(9)) == t0 + .seconds(4))
        _ = queue.popOwner()
        _ = queue.popOwner()  // both late replies arrived
        #expect(queue.newestOverdue(now: t0 + .seconds(8)) == nil)
        _ = queue.removeAll()
        #expect(queue.newestOverdue(now: t0 + .seconds(100)) == nil)
    }

    @Test func aProbeNeverExpiresNorHoldsBackTheCommandsBehindIt() {
        var queue = RequestQueue<Int>()
        // Only the health check's PING outstanding (a frozen server): nothing may rightly take long, nothing expires.
        queue.appendProbe(1, writtenAt: t0)
        #expect(queue.latestDeadline == nil && queue.nextDeadline == nil)
        #expect(queue.newestOverdue(now: t0 + .seconds(100)) == nil)
        #expect(queue.expire(now: t0 + .seconds(100)).isEmpty && queue.liveCount == 1)
        // A slow command written right behind it: busy until its deadline, and it expires on time.
        queue.append(2, deadline: t0 + .seconds(10), writtenAt: t0)
        #expect(queue.latestDeadline == t0 + .seconds(10) && queue.nextDeadline == t0 + .seconds(10))
        #expect(queue.newestOverdue(now: t0 + .seconds(10)) == t0)
        #expect(queue.expire(now: t0 + .seconds(10)).map(\.waiter) == [2])
        // The PONG comes late, and still reaches the probe; the command's late reply is dropped.
        #expect(waiter(queue.popOwner()) == 1)
        #expect(isAbandoned(queue.popOwner()))
        #expect(queue.isEmpty && queue.liveCount == 0)
    }
}
