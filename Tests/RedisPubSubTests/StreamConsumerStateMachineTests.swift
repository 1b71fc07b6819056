import Testing
@testable import RedisPubSub

/// The consumer-group decisions, driven directly: no server, no clock.
@Suite("StreamConsumerStateMachine: prefetch, own entries, reclaims, leases, dead letters, losses")
struct StreamConsumerStateMachineTests {
    typealias Machine = StreamConsumerStateMachine
    let start = ContinuousClock.now

    func settings(
        streams: [RedisName] = ["s"], prefetch: Int = 4, claimIdle: Duration? = .seconds(3), maxDeliveries: Int? = 3
    ) -> Machine.Settings {
        Machine.Settings(
            streams: streams, prefetch: prefetch, claimIdle: claimIdle, claimInterval: .seconds(1),
            leaseInterval: .seconds(1), maxDeliveries: maxDeliveries)
    }

    func id(_ n: UInt64) -> StreamEntryID { StreamEntryID(milliseconds: n, sequence: 0) }
    func entry(_ n: UInt64) -> Machine.RawEntry { Machine.RawEntry(id: id(n), fields: [StreamField(name: "payload", value: [UInt8(n)])]) }
    func key(_ n: UInt64, stream: Int = 0) -> Machine.Key { Machine.Key(stream: stream, id: id(n)) }

    /// A machine past group creation and its own (empty) pending list: reading new entries.
    func reading(_ settings: Machine.Settings) -> Machine {
        var machine = Machine(settings: settings, consumer: "me", now: start)
        _ = machine.groupsReady(Array(settings.streams.indices), created: [], now: start)
        for stream in settings.streams.indices {
            _ = machine.ownEntriesRead(stream: stream, requested: 4, entries: [], deliveryCounts: [:], sentAt: start, now: start)
        }
        return machine
    }

    @Test func startsByCreatingGroupsThenReadsItsOwnPendingEntriesThenNewOnes() {
        var machine = Machine(settings: settings(streams: ["a", "b"]), consumer: "me", now: start)
        let creations = [Machine.GroupCreation(stream: 0, fromBeginning: false), Machine.GroupCreation(stream: 1, fromBeginning: false)]
        let result1 = machine.nextRead(now: start)
        #expect(result1 == .createGroups(creations))
        _ = machine.groupsReady([0, 1], created: [0], now: start)
        let result2 = machine.nextRead(now: start)
        #expect(result2 == .readOwn(stream: 0, after: .zero, count: 4))
        // A full page: the next page starts after its last entry.
        var (outcome, _) = machine.ownEntriesRead(
            stream: 0, requested: 2, entries: [entry(1), entry(2)], deliveryCounts: [id(1): 2, id(2): 3], sentAt: start, now: start)
        #expect(outcome.deliver.map(\.deliveryCount) == [2, 3])
        let result3 = machine.nextRead(now: start)
        #expect(result3 == .readOwn(stream: 0, after: id(2), count: 2))
        (outcome, _) = machine.ownEntriesRead(stream: 0, requested: 2, entries: [], deliveryCounts: [:], sentAt: start, now: start)
        let result4 = machine.nextRead(now: start)
        #expect(result4 == .readOwn(stream: 1, after: .zero, count: 2))
        (outcome, _) = machine.ownEntriesRead(stream: 1, requested: 2, entries: [], deliveryCounts: [:], sentAt: start, now: start)
        // Two streams share the room that is left.
        let result5 = machine.nextRead(now: start)
        #expect(result5 == .readNew(count: 1))
    }

    @Test func theRoomIsThePrefetchLessWhatTheApplicationHoldsAndAReadWaitsForHalfOfIt() {
        var machine = reading(settings(prefetch: 4))
        let first = machine.nextRead(now: start)
        #expect(first == .readNew(count: 4))
        let (outcome, _) = machine.newEntriesRead([(0, [entry(1), entry(2), entry(3), entry(4)])], sentAt: start, now: start)
        #expect(outcome.deliver.map(\.key) == [key(1), key(2), key(3), key(4)])
        let full = machine.nextRead(now: start)
        #expect(full == .waitForRoom)
        let startsFlush = machine.acknowledge(key(1))
        #expect(startsFlush)  // the first one starts a flush
        // One entry of room: not worth a read (a read per entry); half the prefetch is.
        let oneFree = machine.nextRead(now: start)
        #expect(oneFree == .waitForRoom && !machine.hasRoomToRead)
        let queued = machine.acknowledge(key(2))
        #expect(!queued)  // queued behind it
        let twice = machine.acknowledge(key(1))
        #expect(!twice)  // twice is once
        // Acknowledged by the application: room at once, so the read goes out with the XACK, not after it.
        #expect(machine.hasRoomToRead && machine.heldCount == 2)
        let withTheAck = machine.nextRead(now: start)
        #expect(withTheAck == .readNew(count: 2))
        let taken = machine.takeAcknowledgements()
        #expect(taken == [0: [id(1), id(2)]])
        let inFlight = machine.takeAcknowledgements()
        #expect(inFlight.isEmpty)  // one flush in flight
        // A lost connection puts them back in front: still held (pending on the server), still not the application's.
        let lost = RedisError(.connectionClosed, "lost")
        let (more, events) = machine.acknowledgementsSent(failure: lost)
        #expect(more && events == [.disconnected(lost)])
        #expect(machine.isHeld(key(1)) && machine.heldCount == 2)
        _ = machine.takeAcknowledgements()
        let (_, back) = machine.acknowledgementsSent(failure: nil)
        #expect(back == [.reconnected])
        #expect(!machine.isHeld(key(1)) && !machine.isHeld(key(2)) && machine.heldCount == 2)
        // Half the prefetch free again (one entry still the application's): a read.
        _ = machine.newEntriesRead([(0, [entry(5), entry(6)])], sentAt: start, now: start)
        for n: UInt64 in [3, 4, 5] { _ = machine.acknowledge(key(n)) }
        _ = machine.takeAcknowledgements()
        _ = machine.acknowledgementsSent(failure: nil)
        let oneHeld = machine.nextRead(now: start)
        #expect(oneHeld == .readNew(count: 3))
    }

    @Test func idleConsumersAreLookedForInTurnOnceAMinuteOrPerRemovalDelayOnlyWhileReading() {
        var settings = settings(streams: ["a", "b"])
        settings.removeIdleConsumersAfter = .seconds(10)
        var machine = Machine(settings: settings, consumer: "me", now: start)
        let creatingGroups = machine.consumerRemovalDue(now: start)
        #expect(creatingGroups == nil)
        machine = reading(settings)
        let first = machine.consumerRemovalDue(now: start)
        #expect(first?.stream == 0 && first?.minimumIdle == .seconds(10))
        let tooSoon = machine.consumerRemovalDue(now: start + .seconds(4))
        #expect(tooSoon == nil)
        let second = machine.consumerRemovalDue(now: start + .seconds(5))  // 10 s shared by two streams
        #expect(second?.stream == 1)
        #expect(machine.nextConsumerRemovalAt == start + .seconds(10))
        // Refused by the server (an ACL): it stops for good.
        machine.consumerRemovalWasRefused()
        let refused = machine.consumerRemovalDue(now: start + .seconds(60))
        #expect(refused == nil && machine.nextConsumerRemovalAt == nil)
        var never = reading(self.settings())
        let off = never.consumerRemovalDue(now: start)
        #expect(off == nil && never.nextConsumerRemovalAt == nil)
        // An hour's delay is still looked at about once a minute (here 30 s, for each of two streams in turn).
        var hourly = settings
        hourly.removeIdleConsumersAfter = .seconds(3600)
        var slow = reading(hourly)
        _ = slow.consumerRemovalDue(now: start)
        #expect(slow.nextConsumerRemovalAt == start + .seconds(30))
    }

    @Test func anEntryDeliveredTooOftenIsDeadLetteredAndTakesRoomUntilMoved() {
        var machine = reading(settings(prefetch: 2, maxDeliveries: 3))
        let outcome = machine.reclaimed(
            stream: 0, requested: 2,
            candidates: [Machine.Candidate(id: id(1), consumer: "dead", deliveryCount: 3), Machine.Candidate(id: id(2), consumer: "dead", deliveryCount: 1)],
            claimed: [entry(1), entry(2)], sentAt: start, now: start)
        #expect(outcome.deadLetter.map(\.key) == [key(1)])
        #expect(outcome.deadLetter.first?.deliveryCount == 4)
        #expect(outcome.deliver.map(\.key) == [key(2)])
        #expect(outcome.claimed[0]?.map(\.id) == [id(1), id(2)])
        let result15 = machine.nextRead(now: start)
        #expect(result15 == .waitForRoom)
        machine.deadLettered(key(1))
        let result16 = machine.nextRead(now: start)
        #expect(result16 == .readNew(count: 1))
    }

    @Test func deletedEntriesAreLostFromAReclaimAndFromTheOwnPendingList() {
        var machine = reading(settings())
        // XCLAIM returned only 2 of the 3 candidates: 1 was deleted (and the claim dropped it).
        let outcome = machine.reclaimed(
            stream: 0, requested: 4,
            candidates: [1, 2].map { Machine.Candidate(id: id($0), consumer: "dead", deliveryCount: 1) },
            claimed: [entry(2)], sentAt: start, now: start)
        #expect(outcome.lost == [0: [id(1)]] && outcome.acknowledgeLost)  // 6.2 keeps them pending
        #expect(outcome.deliver.map(\.key) == [key(2)])

        // The own pending list returns deleted entries with no fields: lost, and to be acknowledged.
        var fresh = Machine(settings: settings(), consumer: "me", now: start)
        _ = fresh.groupsReady([0], created: [], now: start)
        let (own, _) = fresh.ownEntriesRead(
            stream: 0, requested: 4, entries: [Machine.RawEntry(id: id(7), fields: nil), entry(8)],
            deliveryCounts: [id(7): 2, id(8): 2], sentAt: start, now: start)
        #expect(own.lost == [0: [id(7)]] && own.acknowledgeLost)
        #expect(own.deliver.map(\.key) == [Machine.Key(stream: 0, id: id(8))])
    }

    @Test func leasesAreRenewedOnlyWhileNoOtherConsumerCanHaveTakenTheEntry() {
        var machine = reading(settings(claimIdle: .seconds(3)))
        _ = machine.newEntriesRead([(0, [entry(1)])], sentAt: start, now: start)
        let result17 = machine.leasesDue(now: start + .milliseconds(500))
        #expect(result17.isEmpty)  // not yet due
        let due = machine.leasesDue(now: start + .seconds(1))
        #expect(due == [0: [id(1)]])
        let result18 = machine.leasesDue(now: start + .seconds(1))
        #expect(result18.isEmpty)  // one renewal in flight
        machine.leasesRenewed(due, succeeded: true, sentAt: start + .seconds(1))
        #expect(machine.nextLeaseAt == start + .seconds(2))
        // Renewals that failed until the claim idle time passed: the entry may be another consumer's now, and a
        // renewal (XCLAIM with min-idle 0) would take it back. It is left alone.
        let failed = machine.leasesDue(now: start + .seconds(2))
        machine.leasesRenewed(failed, succeeded: false, sentAt: start + .seconds(2))
        let result19 = machine.leasesDue(now: start + .seconds(4) + .milliseconds(1))
        #expect(result19.isEmpty)
    }

    @Test func failingReleasesWhileTheLeaseHoldsAndClosingReleasesTheRest() {
        var machine = reading(settings(claimIdle: .seconds(3)))
        _ = machine.newEntriesRead([(0, [entry(1), entry(2), entry(3)])], sentAt: start, now: start)
        let result20 = machine.fail(key(1), now: start + .seconds(1))
        #expect(result20)
        let result21 = machine.fail(key(1), now: start + .seconds(1))
        #expect(!result21)  // no longer held
        let result22 = machine.fail(key(2), now: start + .seconds(5))
        #expect(!result22)  // its lease ran out: maybe someone else's now
        _ = machine.acknowledge(key(3))
        let result23 = machine.close(now: start + .seconds(1))
        #expect(result23.isEmpty)  // 3 is being acknowledged, 2 is gone
        let result24 = machine.nextRead(now: start)
        #expect(result24 == .stop)
    }

    @Test func aMissingGroupIsReportedOnceAndCreatedAgainFromTheBeginning() {
        var machine = reading(settings(streams: ["a", "b"]))
        let error = RedisError(.serverError, "NOGROUP No such key 'b' or consumer group 'g' in XREADGROUP with GROUP option")
        let result25 = machine.readFailed(error, now: start)
        #expect(result25 == [.groupMissing(stream: 1)])
        let result26 = machine.nextRead(now: start)
        #expect(result26 == .createGroups([Machine.GroupCreation(stream: 1, fromBeginning: true)]))
        // Creating it fails again (the server refuses): no second report, and a back-off instead of a busy loop.
        let result27 = machine.readFailed(error, now: start)
        #expect(result27.isEmpty)
        guard case .wait(let until) = machine.nextRead(now: start) else {
            Issue.record("no back-off")
            return
        }
        #expect(until > start)
        let result28 = machine.groupsReady([1], created: [1], now: until)
        #expect(result28 == [.groupCreated(stream: 1)])
        let result29 = machine.nextRead(now: until)
        #expect(result29 == .readOwn(stream: 0, after: .zero, count: 4))
    }

    @Test func aLostConnectionIsReportedOnceBacksOffAndRereadsTheOwnPendingList() {
        var machine = reading(settings())
        let lost = RedisError(.connectionClosed, "lost")
        let result30 = machine.readFailed(lost, now: start)
        #expect(result30 == [.disconnected(lost)])
        let result31 = machine.readFailed(lost, now: start)
        #expect(result31.isEmpty)
        var now = start
        var delays: [Duration] = []
        for _ in 0..<8 {
            guard case .wait(let until) = machine.nextRead(now: now) else { break }
            delays.append(until - now)
            now = until
            if case .readOwn = machine.nextRead(now: now) { _ = machine.readFailed(lost, now: now) }
        }
        #expect(delays.first == .milliseconds(100) && delays.last == .seconds(2))  // the second failure waits 100 ms
        #expect(delays == delays.sorted())
        let (_, events) = machine.ownEntriesRead(stream: 0, requested: 4, entries: [], deliveryCounts: [:], sentAt: now, now: now)
        #expect(events == [.reconnected])
        let result32 = machine.nextRead(now: now)
        #expect(result32 == .readNew(count: 4))
    }

    @Test func reclaimsPageThroughThePendingListAndWaitForRoom() {
        var machine = reading(settings(prefetch: 2))
        let due = machine.reclaimDue(now: start)
        #expect(due?.stream == 0 && due?.after == nil && due?.count == 2)
        let result33 = machine.reclaimDue(now: start)
        #expect(result33 == nil)  // one at a time
        let candidates = [1, 2].map { Machine.Candidate(id: id($0), consumer: "dead", deliveryCount: 1) }
        _ = machine.reclaimed(stream: 0, requested: 2, candidates: candidates, claimed: [entry(1), entry(2)], sentAt: start, now: start)
        // A full page: go on at once after its last entry, but only with room.
        let result34 = machine.reclaimDue(now: start)
        #expect(result34 == nil)
        _ = machine.acknowledge(key(1))
        _ = machine.takeAcknowledgements()
        _ = machine.acknowledgementsSent(failure: nil)
        let next = machine.reclaimDue(now: start + .seconds(1))
        #expect(next?.after == id(2) && next?.count == 1)
    }

    @Test func aGroupAnotherConsumerCreatedAgainCountsAsBackAndAnEmptyResultChangesNothing() {
        var machine = reading(settings())
        let error = RedisError(.serverError, "NOGROUP No such key 's' or consumer group 'g' in XREADGROUP with GROUP option")
        let missing = machine.readFailed(error, now: start)
        #expect(missing == [.groupMissing(stream: 0)])
        // Nothing became ready (the server was unreachable): no event, and the back-off stays.
        let lost = RedisError(.connectionClosed, "lost")
        let failed = machine.readFailed(lost, now: start)
        #expect(failed == [.disconnected(lost)])
        let nothing = machine.groupsReady([], created: [], now: start)
        #expect(nothing.isEmpty)
        let waiting = machine.nextRead(now: start)
        guard case .wait = waiting else {
            Issue.record("no back-off: \(waiting)")
            return
        }
        // Another consumer recreated it (BUSYGROUP here): it is back all the same, and a later loss is reported again.
        let back = machine.groupsReady([0], created: [], now: start + .seconds(3))
        #expect(back == [.reconnected, .groupCreated(stream: 0)])
        _ = machine.ownEntriesRead(stream: 0, requested: 4, entries: [], deliveryCounts: [:], sentAt: start, now: start)
        let again = machine.readFailed(error, now: start + .seconds(3))
        #expect(again == [.groupMissing(stream: 0)])
    }

    @Test func aFailedRenewalIsRetriedAfterAPauseNotAtOnce() {
        var machine = reading(settings(claimIdle: .seconds(3)))
        _ = machine.newEntriesRead([(0, [entry(1)])], sentAt: start, now: start)
        let due = machine.leasesDue(now: start + .seconds(1))
        machine.leasesRenewed(due, succeeded: false, sentAt: start + .seconds(1))
        let atOnce = machine.leasesDue(now: start + .seconds(1) + .milliseconds(10))
        #expect(atOnce.isEmpty)
        #expect(machine.nextLeaseAt == start + .seconds(1) + .milliseconds(250))
        let later = machine.leasesDue(now: start + .seconds(1) + .milliseconds(250))
        #expect(later == [0: [id(1)]])
    }

    @Test func noReclaimWhileTheOwnPendingListIsReadAgain() {
        var machine = Machine(settings: settings(), consumer: "me", now: start)
        _ = machine.groupsReady([0], created: [], now: start)
        let during = machine.reclaimDue(now: start)
        #expect(during == nil)
        #expect(machine.nextReclaimAt == start + .seconds(1))  // looked at again after an interval, not spun on
        _ = machine.ownEntriesRead(stream: 0, requested: 4, entries: [], deliveryCounts: [:], sentAt: start, now: start)
        let after = machine.reclaimDue(now: start + .seconds(1))
        #expect(after != nil)
        // The reclaim's room is reserved: the own list's read and it never ask for more than the prefetch together.
        #expect(machine.room == 0)
    }
}
