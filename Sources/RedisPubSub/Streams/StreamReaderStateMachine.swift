/// The decisions of a ``StreamReader``, with no I/O: where each stream is read from next, how much may be read ahead,
/// when a read is a catch-up that also counts what was trimmed before it, and how failures are backed off. The owner
/// carries out each ``Action`` and reports what the server answered.
///
/// A reader always reads after a concrete ID per stream: `$` (new entries) is resolved to the stream's last ID
/// once, at the start, so that a read retried after a reconnect still starts where the last one left off.
///
/// Losses are counted, not guessed. Per stream the machine knows (once it can) how many entries were ever added up
/// to its position. A catch-up read comes with a snapshot of the stream taken atomically with it (entries ever
/// added, length, first ID): when the stream's first entry lies past the position, every entry added after the
/// position and no longer in the stream was deleted before it was read, and that many are reported lost.
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
        /// `count` entries after `after` (and before `before`, the stream's first entry then, if any) were deleted
        /// before they were read.
        case lost(stream: Int, count: Int, after: StreamEntryID, before: StreamEntryID?)
        case failed(RedisError)
    }

    let settings: Settings
    /// The last ID read per stream; `nil` until `$` is resolved.
    private(set) var positions: [StreamEntryID?]
    /// Per stream, how many entries were ever added with an ID up to its position, when known.
    private(set) var counted: [Int?]
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
        }
        return succeeded()
    }

    /// A read answered: returns the entries to deliver, per stream in ID order, and what to report. `snapshots`
    /// come with a catch-up (`nil` inside: no such stream), taken just before the read. An entry at or before a
    /// stream's position (which a correct server never returns) is dropped, so nothing is delivered twice.
    mutating func entriesRead(
        _ read: [(stream: Int, entries: [RawEntry])], requested: Int, snapshots: [Int: StreamInfo?] = [:]
    ) -> (deliver: [(stream: Int, id: StreamEntryID, fields: [StreamField])], events: [Event]) {
        var events = succeeded()
        guard !closed else { return ([], events) }
        if !snapshots.isEmpty { behind = false }
        for (stream, snapshot) in snapshots.sorted(by: { $0.key < $1.key }) {
            if let event = account(stream, snapshot) { events.append(event) }
        }
        var deliver: [(stream: Int, id: StreamEntryID, fields: [StreamField])] = []
        for (stream, entries) in read {
            guard stream < positions.count, var position = positions[stream] else { continue }
            if entries.count >= requested { behind = true }  // more may be waiting: the next read is a catch-up
            let before = deliver.count
            for entry in entries where entry.id > position {
                position = entry.id
                // XREAD never returns a deleted entry's nil fields (only a group's pending list does).
                deliver.append((stream, entry.id, entry.fields ?? []))
            }
            positions[stream] = position
            counted[stream]? += deliver.count - before
        }
        buffered += deliver.count
        return (deliver, events)
    }

    /// Compares a snapshot with the count: when the stream holds nothing at or before the position, whatever was
    /// added after it and is not in the stream was deleted unread.
    private mutating func account(_ stream: Int, _ snapshot: StreamInfo?) -> Event? {
        guard let position = positions[stream] else { return nil }
        guard let snapshot else {
            counted[stream] = 0  // no such stream: one created again counts from its first entry
            return nil
        }
        guard let added = snapshot.entriesAdded else { return nil }  // before Redis 7.0: not countable
        let passed = snapshot.firstID.map { $0 > position } ?? true
        guard passed else { return nil }  // the position is still inside the stream: nothing passed it
        defer { counted[stream] = added - snapshot.length }
        guard let count = counted[stream] else { return nil }
        let lost = added - count - snapshot.length
        guard lost > 0 else { return nil }  // negative: the stream was deleted and created again
        return .lost(stream: stream, count: lost, after: position, before: snapshot.firstID)
    }

    /// The application took `count` entries from the buffer.
    mutating func taken(_ count: Int = 1) {
        buffered = max(0, buffered - count)
    }

    /// A command failed. A lost connection is reported once until a command succeeds again, and the next read is a
    /// catch-up (the reader was away); anything else is reported each time. Both back off.
    mutating func failed(_ error: RedisError, now: Instant) -> [Event] {
        guard !closed, error.code != .cancelled else { return [] }
        var events: [Event] = []
        if StreamConsumerStateMachine.isConnectionLoss(error) {
            behind = true
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
