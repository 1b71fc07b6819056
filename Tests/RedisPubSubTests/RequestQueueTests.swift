import Testing
@testable import RedisPubSub

@Suite("RequestQueue: matching replies to callers")
struct RequestQueueTests {
    let t0 = ContinuousClock.now

    @Test func repliesGoToWaitersInOrder() {
        var queue = RequestQueue<Int>()
        for id in 1...3 { queue.append(id, deadline: t0 + .seconds(id)) }
        guard case .waiter(1) = queue.popOwner(), case .waiter(2) = queue.popOwner(), case .waiter(3) = queue.popOwner() else {
            Issue.record("out of order")
            return
        }
        guard case .none = queue.popOwner() else { Issue.record("expected no owner"); return }
        #expect(queue.isEmpty)
    }

    @Test func expiredWaitersKeepTheirSlotSoLateRepliesAreDropped() {
        var queue = RequestQueue<Int>()
        queue.append(1, deadline: t0 + .seconds(1))
        queue.append(2, deadline: t0 + .seconds(2))
        queue.append(3, deadline: t0 + .seconds(3))
        #expect(queue.expire(now: t0 + .milliseconds(2500)) == [1, 2])
        #expect(queue.liveCount == 1)
        #expect(queue.nextDeadline == t0 + .seconds(3))
        // The late replies of 1 and 2 arrive: they must not reach 3.
        guard case .abandoned = queue.popOwner(), case .abandoned = queue.popOwner() else {
            Issue.record("late reply delivered")
            return
        }
        guard case .waiter(3) = queue.popOwner() else { Issue.record("3 lost its reply"); return }
    }

    @Test func expiringTwiceTakesNothingTwice() {
        var queue = RequestQueue<Int>()
        queue.append(1, deadline: t0)
        #expect(queue.expire(now: t0) == [1])
        #expect(queue.expire(now: t0 + .seconds(10)) == [])
        #expect(queue.nextDeadline == nil)
        #expect(queue.count == 1)
    }

    @Test func poppingAdjustsTheExpiredPrefix() {
        var queue = RequestQueue<Int>()
        queue.append(1, deadline: t0)
        queue.append(2, deadline: t0 + .seconds(5))
        _ = queue.expire(now: t0)
        _ = queue.popOwner()  // 1's late reply
        queue.append(3, deadline: t0 + .seconds(6))
        #expect(queue.expire(now: t0 + .seconds(5)) == [2])
        #expect(queue.nextDeadline == t0 + .seconds(6))
    }

    @Test func removeAllReturnsOnlyLiveWaiters() {
        var queue = RequestQueue<Int>()
        queue.append(1, deadline: t0)
        queue.append(2, deadline: t0 + .seconds(1))
        _ = queue.expire(now: t0)
        #expect(queue.removeAll() == [2])
        #expect(queue.isEmpty && queue.liveCount == 0 && queue.nextDeadline == nil)
    }
}
