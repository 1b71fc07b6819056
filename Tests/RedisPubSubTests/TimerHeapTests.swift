import Testing
@testable import RedisPubSub

@Suite("TimerHeap: the loop's timers")
struct TimerHeapTests {
    @Test func timersFireByDeadlineTiesInInsertionOrderAndCancelledOnesNever() {
        let t0 = ContinuousClock.now
        var fired: [String] = []
        var heap = TimerHeap()
        let late = LoopTimer { fired.append("late") }
        let first = LoopTimer { fired.append("first") }
        let second = LoopTimer { fired.append("second") }
        let cancelled = LoopTimer { fired.append("cancelled") }
        heap.insert(deadline: t0 + .seconds(2), timer: late)
        heap.insert(deadline: t0 + .seconds(1), timer: first)
        heap.insert(deadline: t0 + .milliseconds(500), timer: cancelled)
        heap.insert(deadline: t0 + .seconds(1), timer: second)
        cancelled.cancel()
        #expect(heap.nextDeadline == t0 + .seconds(1))  // the cancelled one is skipped
        #expect(heap.popDue(now: t0) == nil)
        while let timer = heap.popDue(now: t0 + .seconds(1)) { timer.fire() }
        #expect(fired == ["first", "second"])
        heap.popDue(now: t0 + .seconds(3))?.fire()
        #expect(fired == ["first", "second", "late"])
        #expect(heap.nextDeadline == nil)
    }

    @Test func cancelledTimersFarInTheFutureAreSweptOut() {
        let t0 = ContinuousClock.now
        var heap = TimerHeap()
        let soon = LoopTimer {}
        heap.insert(deadline: t0 + .seconds(1), timer: soon)
        for _ in 0..<5000 {
            let far = LoopTimer {}
            heap.insert(deadline: t0 + .seconds(1_000_000), timer: far)
            far.cancel()
        }
        #expect(heap.count < 1100)  // not 5001: they never reach the top, so a sweep drops them
        #expect(heap.nextDeadline == t0 + .seconds(1))
    }
}

extension LoopTimer {
    /// Runs the body as the loop would.
    fileprivate func fire() { body?() }
}
