import Testing
@testable import RedisPubSub

@Suite("HealthCheck: a PING followed by a slow command")
struct HealthCheckBehindACommandTests {
    @Test func aPingHeldBackByACommandWrittenAfterItIsNotADeath() {
        var check = HealthCheck(interval: .milliseconds(200), timeout: .milliseconds(200))
        let start = ContinuousClock.now
        #expect(check.due(now: start + .milliseconds(200), lastRead: start) == .ping(checkAt: start + .milliseconds(400)))
        // DEBUG SLEEP 1.5 written right after the PING, with a 10 s timeout: the PONG waits behind it.
        let busy = check.due(now: start + .milliseconds(400), lastRead: start, busyUntil: start + .seconds(10))
        #expect(busy == .wait(checkAt: start + .milliseconds(600)))
        // Without such a command, the same silence is a death.
        #expect(check.due(now: start + .milliseconds(400), lastRead: start) == .dead(silence: .milliseconds(200)))
    }
}
