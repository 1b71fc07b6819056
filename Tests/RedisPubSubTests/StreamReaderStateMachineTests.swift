import Testing
@testable import RedisPubSub

/// The group-less reader's decisions, driven directly: no server, no clock.
@Suite("StreamReaderStateMachine: positions, read-ahead bound, counted losses, back-off")
struct StreamReaderStateMachineTests {
    typealias Machine = StreamReaderStateMachine
    let start = ContinuousClock.now

    func id(_ n: UInt64) -> StreamEntryID { StreamEntryID(milliseconds: n, sequence: 0) }
    func entries(_ numbers: ClosedRange<UInt64>) -> [Machine.RawEntry] {
        numbers.map { Machine.RawEntry(id: id($0), fields: [StreamField(name: "payload", value: [UInt8($0 % 256)])]) }
    }
    func machine(streams: Int = 1, bufferSize: Int = 10, start: [StreamEntryID?]) -> Machine {
        Machine(settings: Machine.Settings(streamCount: streams, bufferSize: bufferSize), start: start)
    }

    func info(last: UInt64, added: Int?, length: Int, first: UInt64?) -> Machine.StreamInfo {
        Machine.StreamInfo(lastGenerated: id(last), entriesAdded: added, length: length, firstID: first.map(id))
    }

    @Test func newEntriesAreResolvedToAConcreteIDBeforeTheFirstRead() {
        var machine = machine(streams: 2, start: [nil, id(5)])
        let first = machine.nextAction(now: start)
        #expect(first == .resolveNewest([0]))
        _ = machine.newestResolved([0: info(last: 40, added: 40, length: 40, first: 1)])
        // A start after an ID may have a backlog: the first read is a catch-up.
        let second = machine.nextAction(now: start)
        #expect(second == .read(count: 5, after: [id(40), id(5)], catchUp: true))  // the room of 10 shared by 2
        #expect(machine.counted == [40, nil])
        // A stream that does not exist yet starts at 0-0 with nothing counted.
        var missing = self.machine(start: [nil])
        _ = missing.newestResolved([0: Machine.StreamInfo?.none])
        let read = missing.nextAction(now: start)
        #expect(read == .read(count: 10, after: [.zero], catchUp: false))
        #expect(missing.counted == [0])
    }

    @Test func eachReadGoesOnAfterTheLastEntryReadAndNothingIsDeliveredTwice() {
        var machine = machine(bufferSize: 100, start: [nil])
        _ = machine.newestResolved([0: Machine.StreamInfo?.none])
        let (deliver, _) = machine.entriesRead([(0, entries(1...3))], requested: 100)
        #expect(deliver.map(\.id) == [id(1), id(2), id(3)])
        for _ in 0..<3 { machine.taken() }
        // After a blocking read, a catch-up: its snapshot checks nothing was deleted before the read got to it.
        let next = machine.nextAction(now: start)
        #expect(next == .read(count: 100, after: [id(3)], catchUp: true))
        // A reply repeating entries at or before the position (never from a correct server) delivers only the new.
        let (again, _) = machine.entriesRead([(0, entries(2...5))], requested: 100)
        #expect(again.map(\.id) == [id(4), id(5)])
        #expect(machine.positions == [id(5)] && machine.counted == [5])
    }

    @Test func theBufferBoundsWhatIsReadAheadAndWaitingForRoomMakesTheNextReadACatchUp() {
        var machine = machine(bufferSize: 10, start: [nil])
        _ = machine.newestResolved([0: Machine.StreamInfo?.none])
        _ = machine.entriesRead([(0, entries(1...6))], requested: 10)
        let full = machine.nextAction(now: start)
        #expect(full == .waitForRoom)  // 4 free of 10: less than half
        machine.taken()
        #expect(machine.hasRoom)
        let read = machine.nextAction(now: start)
        #expect(read == .read(count: 5, after: [id(6)], catchUp: true))
        // The catch-up's snapshot: the stream still holds the position, nothing passed it; a short read catches up.
        _ = machine.entriesRead([(0, entries(7...8))], requested: 5, snapshots: [0: info(last: 8, added: 8, length: 8, first: 1)])
        machine.taken(7)
        let caughtUp = machine.nextAction(now: start)
        #expect(caughtUp == .read(count: 10, after: [id(8)], catchUp: false))
    }

    @Test func aFullReadMeansABacklogAndTheNextReadIsACatchUp() {
        var machine = machine(bufferSize: 4, start: [nil])
        _ = machine.newestResolved([0: Machine.StreamInfo?.none])
        _ = machine.entriesRead([(0, entries(1...4))], requested: 4)
        machine.taken(4)
        let action = machine.nextAction(now: start)
        #expect(action == .read(count: 4, after: [id(4)], catchUp: true))
    }

    @Test func entriesTrimmedPastThePositionAreCountedAndReportedOnce() {
        var machine = machine(bufferSize: 10, start: [nil])
        // 100 entries ever added when the reader started at the last of them.
        _ = machine.newestResolved([0: info(last: 100, added: 100, length: 100, first: 1)])
        _ = machine.entriesRead([(0, entries(101...110))], requested: 10)  // a full read: behind
        machine.taken(10)
        // Meanwhile 90 more were added (to 200) and the stream trimmed to its last 5 (196...200): 85 lost.
        let (deliver, events) = machine.entriesRead(
            [(0, entries(196...200))], requested: 10, snapshots: [0: info(last: 200, added: 200, length: 5, first: 196)])
        #expect(events == [.lost(stream: 0, count: 85, after: id(110))])
        #expect(deliver.count == 5 && machine.counted == [200])
        // Caught up: a later snapshot of the same stream reports nothing more.
        machine.taken(5)
        let (_, later) = machine.entriesRead([], requested: 10, snapshots: [0: info(last: 200, added: 200, length: 0, first: nil)])
        #expect(later.isEmpty)
    }

    @Test func whatWasTrimmedBeforeAStartFromTheBeginningOrAfterAnIDIsNotReported() {
        var beginning = machine(start: [.zero])
        let (_, events) = beginning.entriesRead(
            [(0, entries(51...60))], requested: 10, snapshots: [0: info(last: 100, added: 100, length: 50, first: 51)])
        #expect(events.isEmpty)
        #expect(beginning.counted == [60])  // 50 trimmed before the start, then 10 read
        var after = machine(start: [id(20)])
        let (_, none) = after.entriesRead([], requested: 10, snapshots: [0: info(last: 100, added: 100, length: 50, first: 51)])
        #expect(none.isEmpty)
        // Before Redis 7.0 (no count of entries ever added), nothing can be counted.
        var old = machine(start: [nil])
        _ = old.newestResolved([0: info(last: 100, added: nil, length: 100, first: 1)])
        let (_, unknown) = old.entriesRead([], requested: 10, snapshots: [0: info(last: 300, added: nil, length: 5, first: 296)])
        #expect(unknown.isEmpty)
        // A stream deleted and created again: a snapshot with fewer entries ever added than counted reports nothing.
        var recreated = machine(start: [nil])
        _ = recreated.newestResolved([0: info(last: 100, added: 100, length: 100, first: 1)])
        let (_, again) = recreated.entriesRead([], requested: 10, snapshots: [0: info(last: 300, added: 3, length: 3, first: 298)])
        #expect(again.isEmpty && recreated.counted == [3])
        // Created again with lower IDs than the position: read from its start, not waited on for ever.
        var lower = machine(start: [nil])
        _ = lower.newestResolved([0: info(last: 100, added: 100, length: 100, first: 1)])
        _ = lower.entriesRead([], requested: 10, snapshots: [0: info(last: 7, added: 7, length: 7, first: 1)])
        #expect(lower.positions == [.zero])
        let fromStart = lower.nextAction(now: start)
        #expect(fromStart == .read(count: 10, after: [.zero], catchUp: false))
    }

    @Test func aResumeInsideTheStreamCountsFromItsFirstCatchUpAndFindsALaterTrim() {
        var machine = machine(bufferSize: 10, start: [id(50)])
        // Entries 1...100 are there; the first catch-up returns 51...60 (full): inside the stream, nothing known yet.
        _ = machine.entriesRead([(0, entries(51...60))], requested: 10, snapshots: [0: info(last: 100, added: 100, length: 100, first: 1)])
        #expect(machine.counted == [nil])
        machine.taken(10)
        // The next returns 61...65 and reaches the end (short): from here the count is exact.
        _ = machine.entriesRead([(0, entries(61...65))], requested: 10, snapshots: [0: info(last: 65, added: 65, length: 65, first: 1)])
        #expect(machine.counted == [65])
        machine.taken(5)
        // 100 more appended and trimmed to the last 5 while the loop was slow: 95 lost, after 65.
        _ = machine.entriesRead([(0, entries(66...75))], requested: 10)  // blocking, full
        machine.taken(10)
        let (_, events) = machine.entriesRead(
            [(0, entries(161...165))], requested: 10, snapshots: [0: info(last: 165, added: 165, length: 5, first: 161)])
        #expect(events == [.lost(stream: 0, count: 85, after: id(75))])
    }

    @Test func anEntryDeletedBeforeABlockingReadGotToItIsFoundByTheNextCatchUp() {
        var machine = machine(bufferSize: 100, start: [nil])
        _ = machine.newestResolved([0: info(last: 10, added: 10, length: 10, first: 1)])
        // 11...15 appended, 13 removed with XDEL before the read: the blocking read returns 11, 12, 14, 15.
        let returned = entries(11...15).filter { $0.id != id(13) }
        _ = machine.entriesRead([(0, returned)], requested: 100)
        let (_, events) = machine.entriesRead([], requested: 100, snapshots: [0: info(last: 15, added: 15, length: 14, first: 1)])
        #expect(events == [.lost(stream: 0, count: 1, after: id(10))])
        let (_, nothingMore) = machine.entriesRead([], requested: 100, snapshots: [0: info(last: 15, added: 15, length: 14, first: 1)])
        #expect(nothingMore.isEmpty)
    }

    @Test func aLostConnectionIsReportedOnceBacksOffAndTheReturnIsACatchUp() {
        var machine = machine(start: [nil])
        _ = machine.newestResolved([0: Machine.StreamInfo?.none])
        let lost = RedisError(.connectionClosed, "gone")
        let first = machine.failed(lost, now: start)
        #expect(first == [.disconnected(lost)])
        let waiting = machine.nextAction(now: start)
        #expect(waiting == .wait(until: start + .milliseconds(50)))
        let second = machine.failed(lost, now: start + .milliseconds(50))
        #expect(second.isEmpty)
        let longer = machine.nextAction(now: start + .milliseconds(60))
        #expect(longer == .wait(until: start + .milliseconds(150)))  // doubled
        let back = machine.nextAction(now: start + .milliseconds(150))
        #expect(back == .read(count: 10, after: [.zero], catchUp: true))
        let (_, events) = machine.entriesRead([], requested: 10, snapshots: [0: nil])
        #expect(events == [.reconnected])
    }

    @Test func otherFailuresAreReportedEachTimeAndTheBackOffIsCapped() {
        var machine = machine(start: [.zero])
        let wrongType = RedisError(.serverError, "WRONGTYPE Operation against a key holding the wrong kind of value")
        var now = start
        for _ in 0..<10 {
            let events = machine.failed(wrongType, now: now)
            #expect(events == [.failed(wrongType)])
            guard case .wait(let until) = machine.nextAction(now: now) else { Issue.record("no back-off"); return }
            #expect(until - now <= .seconds(2))
            now = until
        }
        let cancelled = machine.failed(RedisError(.cancelled, "cancelled"), now: now)
        #expect(cancelled.isEmpty)
    }

    @Test func aClosedReaderStopsAndDeliversNothingMore() {
        var machine = machine(start: [.zero])
        machine.close()
        let action = machine.nextAction(now: start)
        #expect(action == .stop)
        let (deliver, _) = machine.entriesRead([(0, entries(1...2))], requested: 10)
        #expect(deliver.isEmpty)
    }
}
