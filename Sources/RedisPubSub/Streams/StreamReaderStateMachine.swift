/// The decisions of a ``StreamReader``, with no I/O: where each stream is read from next, how much may be read ahead,
/// when a read is a catch-up that also counts what was trimmed before it, and how failures are backed off. The owner
/// carries out each ``Action`` and reports what the server answered.
///
/// A reader always reads after a concrete ID per stream: `$` (new entries) is resolved to the stream's last ID
/// once, at the start, so that a read retried after a reconnect still starts where the last one left off.
///
/// Losses are counted, not guessed. Per stream the machine knows (once it can) how many entries were ever added with
/// an ID up to its position. Every read that may have left something behind (a read that returned all it asked for,
/// a wait for room, a reconnect, and every blocking read) is followed by a catch-up: a read sent in one transaction
/// with a snapshot of the stream (entries ever added, length, first ID), so the two agree. A catch-up that returns
/// less than it asked reached the stream's end: whatever was added and is neither counted nor returned was deleted
/// unread (trimmed, or `XDEL`). One that returns all it asked, where the stream's first entry lies past the
/// position, was passed by trimming: whatever was added after the position and is no longer in the stream is lost.
struct StreamReaderStateMachine {
    typealias Instant = ContinuousClock.Instant
    typealias RawEntry = StreamConsumerStateMachine.RawEntry
    typealias StreamInfo = StreamReplies.StreamInfo

    struct Settings {
        var streamCount: Int
        /// The most entries read and not yet taken by the application.
        var bufferSize: Int
    }

    enum Action: Equatable {
        /// Ask each of these streams for its last ID and its count of entries ever added (`XINFO STREAM`), then report
        /// them with ``newestResolved(_:)``.
        case resolveNewest([Int])
        /// `XREAD COUNT count STREAMS s... after...`. Blocking (`BLOCK`) when the reader is caught up; otherwise a
        /// catch-up: one transaction with an `XINFO STREAM` of each stream before the read, reported with the read.
        case read(count: Int, after: [StreamEntryID], catchUp: Bool)
        /// Wait until the application takes entries (``taken(_:)``).
        case waitForRoom
        /// Wait (a back-off after a failure).
        case wait(until: Instant)
        /// Closed.
        case stop
    }

    enum Event: Equatable {
        case disconnected(RedisError)
        case reconnected
        /// `count` entries appended after `after` were deleted before they were read.
        case lost(stream: Int, count: Int, after: StreamEntryID)
        case failed(RedisError)
    }

    let settings: Settings
    /// The last ID read per stream; `nil` until `$` is resolved.
    private(set) var positions: [StreamEntryID?]
    /// Per stream, how many entries were ever added with an ID up to its position, when known.
    private(set) var counted: [Int?]
    /// Per stream, the position where ``counted`` was last known exactly (a loss found later lies after it).
    private var countedExactlyAt: [StreamEntryID]
    /// Read and not yet taken.
    private(set) var buffered = 0
    private var behind: Bool
    private var closed = false
    private var backoffUntil: Instant?
    private var failures = 0
    private var disconnected = false

    /// `start[i]`: the ID after which stream `i` is read, `nil` for its new entries (`$`). Counting starts at the
    /// resolution of `$`, or at the first catch-up for a given ID (what was trimmed before the reader started is not
    /// its loss to report: it cannot be told from what was never there).
    init(settings: Settings, start: [StreamEntryID?]) {
        precondition(start.count == settings.streamCount && settings.bufferSize > 0)
        self.settings = settings
        self.positions = start
        self.counted = Array(repeating: nil, count: start.count)
        self.countedExactlyAt = start.map { $0 ?? .zero }
        self.behind = start.contains { $0 != nil }  // a given start may have a backlog
    }

    /// Whether the buffer has room for a read worth sending: half of it free, or nothing buffered.
    var hasRoom: Bool { buffered == 0 || settings.bufferSize - buffered >= max(1, settings.bufferSize / 2) }

    mutating func nextAction(now: Instant) -> Action {
        if closed { return .stop }
        if let backoffUntil, now < backoffUntil { return .wait(until: backoffUntil) }
        let unresolved = positions.indices.filter { positions[$0] == nil }
        if !unresolved.isEmpty { return .resolveNewest(unresolved) }
        guard hasRoom else {
            behind = true  // the application is slower than the stream: trimming may pass the reader while it waits
            return .waitForRoom
        }
        let room = settings.bufferSize - buffered
        // COUNT applies per stream: share the room, so one read never overfills the buffer by more than rounding.
        let count = max(1, room / settings.streamCount)
        return .read(count: count, after: positions.map { $0 ?? .zero }, catchUp: behind)
    }

    /// The streams ``Action/resolveNewest(_:)`` named: `nil` for one that does not exist yet (every entry it will
    /// have is new).
    mutating func newestResolved(_ infos: [Int: StreamInfo?]) -> [Event] {
        for (stream, info) in infos where positions[stream] == nil {
            positions[stream] = info?.lastGenerated ?? .zero
            counted[stream] = info.map { $0.entriesAdded } ?? 0
            countedExactlyAt[stream] = positions[stream] ?? .zero
        }
        return succeeded()
    }

    /// A read answered: returns the entries to deliver, per stream in ID order, and what to report. `snapshots`
    /// come with a catch-up (`nil` inside: no such stream), taken atomically with the read. An entry at or before a
    /// stream's position (which a correct server never returns) is dropped, so nothing is delivered twice.
    mutating func entriesRead(
        _ read: [(stream: Int, entries: [RawEntry])], requested: Int, snapshots: [Int: StreamInfo?] = [:]
    ) -> (deliver: [(stream: Int, id: StreamEntryID, fields: [StreamField])], events: [Event]) {
        var events = succeeded()
        guard !closed else { return ([], events) }
        let catchUp = !snapshots.isEmpty
        // After a blocking read, a catch-up (its snapshot checks the count, and finds a stream created again with
        // lower IDs); after a catch-up, another only if it returned all it asked for.
        behind = !catchUp
        var deliver: [(stream: Int, id: StreamEntryID, fields: [StreamField])] = []
        var returned: [Int: (raw: Int, delivered: Int, from: StreamEntryID)] = [:]
        for (stream, entries) in read {
            guard stream < positions.count, var position = positions[stream] else { continue }
            if entries.count >= requested { behind = true }  // more may be waiting: the next read is a catch-up
            let before = deliver.count
            let from = position
            for entry in entries where entry.id > position {
                position = entry.id
                // XREAD never returns a deleted entry's nil fields (only a group's pending list does).
                deliver.append((stream, entry.id, entry.fields ?? []))
            }
            positions[stream] = position
            returned[stream] = (entries.count, deliver.count - before, from)
            if !catchUp { counted[stream]? += deliver.count - before }
        }
        // A catch-up's snapshot describes the stream as its read found it: check the count against both.
        for (stream, snapshot) in snapshots.sorted(by: { $0.key < $1.key }) where stream < positions.count {
            guard let current = positions[stream] else { continue }
            let (raw, delivered, from) = returned[stream] ?? (0, 0, current)
            if let event = account(stream, snapshot, from: from, full: raw >= requested, delivered: delivered) {
                events.append(event)
            }
        }
        buffered += deliver.count
        return (deliver, events)
    }

    /// Checks a catch-up's snapshot against the count: `from` was the position before the read, which returned
    /// `delivered` new entries (the position is now past them) and was `full` if it returned all it asked for.
    private mutating func account(
        _ stream: Int, _ snapshot: StreamInfo?, from: StreamEntryID, full: Bool, delivered: Int
    ) -> Event? {
        guard let end = positions[stream] else { return nil }
        guard let snapshot else {
            counted[stream] = 0  // no such stream: one created again counts from its first entry
            countedExactlyAt[stream] = end
            return nil
        }
        if snapshot.lastGenerated < from {
            // IDs went back: the stream was deleted and created again with lower IDs. Read it from its start.
            positions[stream] = .zero
            counted[stream] = 0
            countedExactlyAt[stream] = .zero
            return nil
        }
        guard let added = snapshot.entriesAdded else { return nil }  // before Redis 7.0: nothing to count with
        let known = counted[stream]
        let passed = snapshot.firstID.map { $0 > from } ?? true
        // Where the lost entries lie: after the position when trimming passed it, else after the last exact count.
        let after = passed ? from : countedExactlyAt[stream]
        var lost = 0
        if !full {
            // The read reached the end: every entry ever added is counted, returned, or gone.
            if let known { lost = added - known - delivered }
            counted[stream] = added
        } else if passed {
            // Trimming passed the position: everything after it that is still there was returned first.
            if let known { lost = added - known - snapshot.length }
            counted[stream] = added - snapshot.length + delivered
        } else {
            counted[stream]? += delivered  // still inside the stream: an `XDEL` here is found at the end
            return nil
        }
        countedExactlyAt[stream] = end
        // Negative: the stream was deleted and created again since it was counted.
        return lost > 0 ? .lost(stream: stream, count: lost, after: after) : nil
    }

    /// The application took `count` entries from the buffer.
    mutating func taken(_ count: Int = 1) {
        buffered = max(0, buffered - count)
    }

    /// A command failed. A lost connection is reported once until a command succeeds again; anything else is
    /// reported each time. Both back off, and the next read is a catch-up (the reader was away).
    mutating func failed(_ error: RedisError, now: Instant) -> [Event] {
        guard !closed, error.code != .cancelled else { return [] }
        var events: [Event] = []
        behind = true
        if StreamConsumerStateMachine.isConnectionLoss(error) {
            if !disconnected {
                disconnected = true
                events.append(.disconnected(error))
            }
        } else {
            events.append(.failed(error))
        }
        // 50 ms, doubling to 2 s: a persistent failure costs one command per step, never a busy loop.
        backoffUntil = now + min(.milliseconds(50 * (1 << min(failures, 6))), .seconds(2))
        failures += 1
        return events
    }

    mutating func close() {
        closed = true
    }

    private mutating func succeeded() -> [Event] {
        failures = 0
        backoffUntil = nil
        guard disconnected else { return [] }
        disconnected = false
        return [.reconnected]
    }
}
