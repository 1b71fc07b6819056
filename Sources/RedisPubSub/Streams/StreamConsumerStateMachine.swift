/// Every decision of a ``StreamConsumer``: what to read next and how much (bounded by the prefetch), which entries
/// to deliver, reclaim, keep leased, dead-letter or report as lost, when to back off, when a group must be created.
///
/// A pure value: no locks, no connections, no clock reads (events carry `now`, replies carry the instant their
/// command was sent). The consumer's driver asks it what to do, does it, and reports the result; unit tests drive it
/// directly.
///
/// Streams are numbered by their place in ``Settings/streams``. An entry is *held* from the read that delivered it
/// until its acknowledgement is confirmed, or it is failed, or handed to the dead-letter stream: the number held (plus
/// dead letters in flight) never exceeds ``Settings/prefetch``, so reads ask for the room that is left.
struct StreamConsumerStateMachine {
    typealias Instant = ContinuousClock.Instant

    struct Settings: Sendable {
        var streams: [RedisName]
        var prefetch: Int
        /// Entries of any consumer pending longer than this are taken over; `nil`: never.
        var claimIdle: Duration?
        var claimInterval: Duration
        /// How often a held entry's idle time is reset (below ``claimIdle``, so a live consumer keeps its entries).
        var leaseInterval: Duration
        /// More deliveries than this send an entry to the dead-letter stream; `nil`: never.
        var maxDeliveries: Int?
        /// Other consumers idle this long with nothing pending are removed from the group; `nil`: never.
        var removeIdleConsumersAfter: Duration? = nil
    }

    /// An entry of one of the streams.
    struct Key: Hashable, Sendable {
        var stream: Int
        var id: StreamEntryID
    }

    /// An entry as a read returned it: `fields` is `nil` when the entry was deleted (trimmed) while pending.
    struct RawEntry: Equatable, Sendable {
        var id: StreamEntryID
        var fields: [StreamField]?
    }

    /// An entry to hand to the application (or to the dead-letter stream).
    struct Entry: Equatable, Sendable {
        var key: Key
        var fields: [StreamField]
        var deliveryCount: Int
    }

    /// A pending entry another consumer (or this one) left idle, as `XPENDING ... IDLE` listed it.
    struct Candidate: Equatable, Sendable {
        var id: StreamEntryID
        var consumer: RedisName
        var deliveryCount: Int
    }

    /// A group to create: from the configured start, or from the stream's first entry when it is created again
    /// after `NOGROUP` (whatever was appended since the stream came back is then delivered).
    struct GroupCreation: Equatable {
        var stream: Int
        var fromBeginning: Bool
    }

    enum ReadAction: Equatable {
        /// `XGROUP CREATE ... MKSTREAM` for these streams (BUSYGROUP counts as done); report ``groupsReady(_:created:now:)``.
        case createGroups([GroupCreation])
        /// Read this consumer's own pending entries of a stream after `after` (at most `count`), with their delivery
        /// counts; report ``ownEntriesRead(stream:requested:entries:deliveryCounts:sentAt:now:)``.
        case readOwn(stream: Int, after: StreamEntryID, count: Int)
        /// Read new entries of every stream (`>`), at most `count`, blocking a while; report ``newEntriesRead(_:sentAt:now:)``.
        case readNew(count: Int)
        /// Nothing to read until an entry is released (acknowledged, failed, dead-lettered).
        case waitForRoom
        /// Back off until then, then ask again.
        case wait(until: Instant)
        /// The consumer is closed.
        case stop
    }

    /// What to do with the entries of a read or a claim.
    struct Outcome: Equatable {
        /// Hand to the application, in this order.
        var deliver: [Entry] = []
        /// Move to the dead-letter stream and acknowledge (report ``deadLettered(_:)`` for each).
        var deadLetter: [Entry] = []
        /// Entries that are gone (trimmed or deleted while pending), per stream, to report.
        var lost: [Int: [StreamEntryID]] = [:]
        /// Whether ``lost`` must be acknowledged to leave the pending list (true after a read of the own pending
        /// list, whose deleted entries stay there; a claim already dropped them).
        var acknowledgeLost = false
        /// Entries taken over from other consumers, per stream, to report.
        var claimed: [Int: [Candidate]] = [:]
    }

    enum Event: Equatable {
        case disconnected(RedisError)
        case reconnected
        case groupMissing(stream: Int)
        case groupCreated(stream: Int)
        case failed(RedisError)
    }

    private enum Phase: Equatable {
        case creatingGroups(Set<Int>)
        case readingOwn(stream: Int, after: StreamEntryID)
        case readingNew
        case closed
    }

    private struct Held {
        /// When the server last reset the entry's idle time (at the latest): its delivery, claim or lease renewal.
        var leaseFrom: Instant
        var renewing = false
        var acknowledging = false
        /// After a failed renewal: not tried again before this (a reconnecting connection fails at once).
        var retryAt: Instant?
    }

    let settings: Settings
    private let me: RedisName
    private var phase: Phase
    private var held: [Key: Held] = [:]
    /// Entries being moved to the dead-letter stream: they take room, and a second path must not move them again.
    private var deadLettering: Set<Key> = []
    /// Room promised to a read of the own pending list and to a reclaim in flight (a blocking read of new entries
    /// reserves none: see ``nextRead(now:)``).
    private var readReserved = 0
    private var reclaimReserved = 0
    private var acknowledgements: [Key] = []
    /// Held entries whose acknowledgement is queued or in flight.
    private var acknowledgingCount = 0
    private var acknowledgementsInFlight: [Key] = []
    private var backoffUntil: Instant?
    private var failures = 0
    private var disconnected = false
    private var missingReported: Set<Int> = []
    private var nextReclaim: Instant
    private var reclaimCursor: [Int: StreamEntryID] = [:]
    private var reclaimStream = 0
    private var reclaiming = false
    private var nextConsumerRemoval: Instant
    private var consumerRemovalStream = 0
    private var consumerRemovalRefused = false

    init(settings: Settings, consumer: RedisName, now: Instant) {
        precondition(!settings.streams.isEmpty && settings.prefetch > 0)
        self.settings = settings
        self.me = consumer
        self.phase = .creatingGroups(Set(settings.streams.indices))
        self.nextReclaim = now
        self.nextConsumerRemoval = now
    }

    // MARK: Reading

    /// Free room for entries: the prefetch minus what is held and being dead-lettered.
    ///
    /// An entry the application acknowledged no longer takes room, although it stays held until the server confirms:
    /// the next read then goes out together with the `XACK`, as a pipelined loop does, instead of a round trip later.
    /// (If the acknowledgement fails, the entry is held past the prefetch until it is sent again.)
    var room: Int {
        max(0, settings.prefetch - unacknowledgedCount - deadLettering.count - readReserved - reclaimReserved)
    }

    /// Entries held and not acknowledged by the application.
    private var unacknowledgedCount: Int { held.count - acknowledgingCount }

    /// Entries held right now (delivered and not yet acknowledged by the application).
    var heldCount: Int { unacknowledgedCount }

    /// Whether a read of new entries may go out: with room for half the prefetch at least, or with nothing held.
    /// Reading as soon as one entry is acknowledged would make a read (and its round trip) per entry.
    var hasRoomToRead: Bool {
        let room = self.room
        return room > 0 && (room >= max(1, settings.prefetch / 2) || unacknowledgedCount == 0)
    }

    var isClosed: Bool { phase == .closed }

    func isHeld(_ key: Key) -> Bool { held[key] != nil }

    mutating func nextRead(now: Instant) -> ReadAction {
        if phase == .closed { return .stop }
        if let backoffUntil, now < backoffUntil { return .wait(until: backoffUntil) }
        switch phase {
        case .creatingGroups(let streams):
            return .createGroups(streams.sorted().map { GroupCreation(stream: $0, fromBeginning: missingReported.contains($0)) })
        case .readingOwn(let stream, let after):
            guard room > 0 else { return .waitForRoom }
            readReserved = room
            return .readOwn(stream: stream, after: after, count: readReserved)
        case .readingNew:
            guard hasRoomToRead else { return .waitForRoom }
            // COUNT applies to each stream: share the room out (a read may then exceed it by at most the number of
            // streams less one, when the room is smaller than that).
            // Not reserved: a blocking read waits most of its time, and would keep reclaims from ever having room. A
            // reclaim answered while it waits can therefore take the consumer past the prefetch, by at most its own
            // count.
            return .readNew(count: max(1, room / settings.streams.count))
        case .closed: return .stop
        }
    }

    /// The groups of `streams` exist now (`created`: those the consumer created, not found with BUSYGROUP).
    mutating func groupsReady(_ streams: [Int], created: [Int], now: Instant) -> [Event] {
        guard case .creatingGroups(var missing) = phase, !streams.isEmpty else { return [] }
        var events = succeeded()
        // Created here or by another consumer (BUSYGROUP): either way the group is back.
        for stream in streams where missingReported.remove(stream) != nil { events.append(.groupCreated(stream: stream)) }
        missing.subtract(streams)
        // With every group there, read what this consumer already holds in them (its own pending entries) first.
        phase = missing.isEmpty ? .readingOwn(stream: 0, after: .zero) : .creatingGroups(missing)
        return events
    }

    /// The consumer's own pending entries of `stream` after the cursor, as `XREADGROUP ... STREAMS s <cursor>`
    /// returned them, with the delivery counts `XPENDING` gave for the same range (an entry missing there was taken
    /// over by another consumer in between: not delivered here).
    mutating func ownEntriesRead(
        stream: Int, requested: Int, entries: [RawEntry], deliveryCounts: [StreamEntryID: Int], sentAt: Instant, now: Instant
    ) -> (Outcome, [Event]) {
        readReserved = 0
        guard case .readingOwn(stream, _) = phase else { return (Outcome(), []) }
        let events = succeeded()
        var outcome = Outcome(acknowledgeLost: true)
        for entry in entries {
            let key = Key(stream: stream, id: entry.id)
            guard let fields = entry.fields else {
                outcome.lost[stream, default: []].append(entry.id)
                continue
            }
            guard held[key] == nil, !deadLettering.contains(key), let count = deliveryCounts[entry.id] else { continue }
            admit(Entry(key: key, fields: fields, deliveryCount: count), sentAt: sentAt, into: &outcome)
        }
        if entries.count < requested {
            phase = stream + 1 < settings.streams.count ? .readingOwn(stream: stream + 1, after: .zero) : .readingNew
        } else if let last = entries.last {
            phase = .readingOwn(stream: stream, after: last.id)
        }
        return (outcome, events)
    }

    /// New entries (`>`), per stream: first deliveries.
    mutating func newEntriesRead(_ entries: [(stream: Int, entries: [RawEntry])], sentAt: Instant, now: Instant) -> (Outcome, [Event]) {
        readReserved = 0
        guard phase == .readingNew else { return (Outcome(), []) }
        let events = succeeded()
        var outcome = Outcome()
        for (stream, raw) in entries {
            for entry in raw {
                let key = Key(stream: stream, id: entry.id)
                guard let fields = entry.fields else {
                    outcome.lost[stream, default: []].append(entry.id)
                    outcome.acknowledgeLost = true
                    continue
                }
                guard held[key] == nil else { continue }
                admit(Entry(key: key, fields: fields, deliveryCount: 1), sentAt: sentAt, into: &outcome)
            }
        }
        return (outcome, events)
    }

    /// A read or a group creation failed. A missing group (`NOGROUP`) is created again; a lost connection makes the
    /// next read start over with the own pending entries; anything else is retried after a back-off.
    mutating func readFailed(_ error: RedisError, now: Instant) -> [Event] {
        readReserved = 0
        guard phase != .closed, error.code != .cancelled else { return [] }
        var events: [Event] = []
        if let missing = Self.missingGroups(error, streams: settings.streams) {
            let streams = missing.isEmpty ? Set(settings.streams.indices) : missing
            for stream in streams.sorted() where missingReported.insert(stream).inserted {
                events.append(.groupMissing(stream: stream))
            }
            if case .creatingGroups = phase { backOff(now) } else { failures = 0 }
            phase = .creatingGroups(streams)
            return events
        }
        if Self.isConnectionLoss(error) {
            if !disconnected {
                disconnected = true
                events.append(.disconnected(error))
            }
            // The server may have delivered entries that never arrived: they are in the own pending list.
            if case .creatingGroups = phase {} else { phase = .readingOwn(stream: 0, after: .zero) }
        } else {
            events.append(.failed(error))
        }
        backOff(now)
        return events
    }

    // MARK: Releasing entries

    /// The application acknowledged an entry: queued for the next `XACK`. Returns whether a flush should start
    /// (nothing was queued or in flight).
    mutating func acknowledge(_ key: Key) -> Bool {
        guard var entry = held[key], !entry.acknowledging else { return false }
        entry.acknowledging = true
        acknowledgingCount += 1
        held[key] = entry
        acknowledgements.append(key)
        return acknowledgements.count == 1 && acknowledgementsInFlight.isEmpty
    }

    /// The acknowledgements to send now, per stream (empty when some are in flight or none are queued).
    mutating func takeAcknowledgements() -> [Int: [StreamEntryID]] {
        guard acknowledgementsInFlight.isEmpty, !acknowledgements.isEmpty else { return [:] }
        acknowledgementsInFlight = acknowledgements
        acknowledgements = []
        return Dictionary(grouping: acknowledgementsInFlight, by: \.stream).mapValues { $0.map(\.id) }
    }

    /// The `XACK`s taken last were answered (`failure` `nil`; an error reply counts as answered: there is nothing
    /// left to acknowledge), or failed with a lost connection (queued again, in front). Returns whether more are
    /// queued, and the events: acknowledgements notice a lost connection (and its return) while no read is running.
    mutating func acknowledgementsSent(failure: RedisError?) -> (more: Bool, events: [Event]) {
        var events: [Event] = []
        if let failure {
            acknowledgements = acknowledgementsInFlight + acknowledgements
            if !disconnected {
                disconnected = true
                events.append(.disconnected(failure))
            }
        } else {
            for key in acknowledgementsInFlight where held.removeValue(forKey: key) != nil { acknowledgingCount -= 1 }
            if disconnected {
                disconnected = false
                events.append(.reconnected)
            }
        }
        acknowledgementsInFlight = []
        return (!acknowledgements.isEmpty, events)
    }

    /// Acknowledgements queued or in flight.
    var hasAcknowledgements: Bool { !acknowledgements.isEmpty || !acknowledgementsInFlight.isEmpty }

    /// The application failed an entry: it is released without acknowledgement and its lease ends, so it becomes
    /// idle and is delivered again once it has been idle ``Settings/claimIdle`` (to any consumer, this one included),
    /// counting one more delivery.
    /// Returns whether to release it now (`XCLAIM ... IDLE <claimIdle> JUSTID`, so a reclaim takes it at once):
    /// only while its lease holds, so no other consumer can have taken it over already.
    mutating func fail(_ key: Key, now: Instant) -> Bool {
        guard let entry = held[key], !entry.acknowledging else { return false }
        held[key] = nil
        guard let claimIdle = settings.claimIdle else { return false }
        return now < entry.leaseFrom + claimIdle
    }

    /// A dead letter was written and its entry acknowledged (or that failed: the entry then stays pending and is
    /// reclaimed and dead-lettered again later).
    mutating func deadLettered(_ key: Key) {
        deadLettering.remove(key)
    }

    // MARK: Leases and reclaiming

    /// Held entries whose idle time should be reset now (`XCLAIM ... JUSTID` by this consumer), per stream. Only
    /// entries no other consumer can have taken over yet are renewed: a renewal must never take one back.
    mutating func leasesDue(now: Instant) -> [Int: [StreamEntryID]] {
        guard let claimIdle = settings.claimIdle, phase != .closed else { return [:] }
        var due: [Int: [StreamEntryID]] = [:]
        for (key, var entry) in held where !entry.renewing && !entry.acknowledging {
            guard entry.leaseFrom + settings.leaseInterval <= now, now < entry.leaseFrom + claimIdle else { continue }
            if let retryAt = entry.retryAt, now < retryAt { continue }
            entry.renewing = true
            held[key] = entry
            due[key.stream, default: []].append(key.id)
        }
        for stream in due.keys { due[stream]!.sort() }
        return due
    }

    /// Leases sent at `sentAt` were renewed (or not, when the command failed).
    mutating func leasesRenewed(_ ids: [Int: [StreamEntryID]], succeeded: Bool, sentAt: Instant) {
        for (stream, ids) in ids {
            for id in ids {
                let key = Key(stream: stream, id: id)
                guard var entry = held[key] else { continue }
                entry.renewing = false
                if succeeded {
                    entry.leaseFrom = max(entry.leaseFrom, sentAt)
                    entry.retryAt = nil
                } else {
                    entry.retryAt = sentAt + min(settings.leaseInterval, .milliseconds(250))
                }
                held[key] = entry
            }
        }
    }

    /// The next reclaim: list the entries of `stream` idle at least ``Settings/claimIdle`` after the cursor (at most
    /// `count`) and claim them, atomically; report ``reclaimed(stream:requested:candidates:claimed:sentAt:now:)``.
    mutating func reclaimDue(now: Instant) -> (stream: Int, after: StreamEntryID?, count: Int)? {
        guard settings.claimIdle != nil, !reclaiming, now >= nextReclaim else { return nil }
        // Only once the own pending entries are read again (a reclaim would take idle own ones too, counting a
        // delivery twice), and only with room: else look again after an interval, not at once.
        guard phase == .readingNew, room > 0 else {
            nextReclaim = now + settings.claimInterval
            return nil
        }
        reclaiming = true
        reclaimReserved = room
        return (reclaimStream, reclaimCursor[reclaimStream], reclaimReserved)
    }

    /// The stream whose group to clear of idle consumers with nothing pending, when that is due (once a minute, or
    /// once per removal delay if shorter, each stream in turn). Consumers with pending entries are never removed:
    /// `XGROUP DELCONSUMER` would drop their entries from the pending list, and nothing would deliver them again.
    mutating func consumerRemovalDue(now: Instant) -> (stream: Int, minimumIdle: Duration)? {
        guard let after = settings.removeIdleConsumersAfter, !consumerRemovalRefused, phase == .readingNew,
            now >= nextConsumerRemoval
        else { return nil }
        nextConsumerRemoval = now + min(after, .seconds(60)) / settings.streams.count
        defer { consumerRemovalStream = (consumerRemovalStream + 1) % settings.streams.count }
        return (consumerRemovalStream, after)
    }

    /// When the next search for idle consumers is due (for the driver's timer).
    var nextConsumerRemovalAt: Instant? {
        settings.removeIdleConsumersAfter == nil || consumerRemovalRefused || phase == .closed ? nil : nextConsumerRemoval
    }

    /// The server refused the search (an ACL without `XINFO` or `XGROUP DELCONSUMER`, scripting disabled): it stops.
    mutating func consumerRemovalWasRefused() {
        consumerRemovalRefused = true
    }

    /// When the next reclaim is due (for the driver's timer).
    var nextReclaimAt: Instant? { settings.claimIdle == nil || phase == .closed ? nil : nextReclaim }

    /// The earliest time a held entry's lease is due for renewal (entries whose lease lapsed are never renewed).
    var nextLeaseAt: Instant? {
        guard let claimIdle = settings.claimIdle, phase != .closed else { return nil }
        var earliest: Instant?
        for entry in held.values where !entry.renewing && !entry.acknowledging {
            let due = max(entry.leaseFrom + settings.leaseInterval, entry.retryAt ?? entry.leaseFrom)
            guard due < entry.leaseFrom + claimIdle else { continue }
            earliest = min(earliest ?? due, due)
        }
        return earliest
    }

    /// A reclaim's result: `candidates` as listed, `claimed` as `XCLAIM` returned them (a candidate it did not
    /// return was deleted from the stream, and the claim dropped it from the pending list: lost).
    mutating func reclaimed(
        stream: Int, requested: Int, candidates: [Candidate], claimed: [RawEntry], sentAt: Instant, now: Instant
    ) -> Outcome {
        reclaiming = false
        reclaimReserved = 0
        // Entries a claim returned for an entry that was deleted stay pending on Redis 6.2 (7.0 drops them):
        // acknowledging them is harmless either way.
        var outcome = Outcome(acknowledgeLost: true)
        guard phase != .closed else { return outcome }
        let fields = Dictionary(claimed.compactMap { entry in entry.fields.map { (entry.id, $0) } }, uniquingKeysWith: { a, _ in a })
        for candidate in candidates {
            let key = Key(stream: stream, id: candidate.id)
            guard let entryFields = fields[candidate.id] else {
                outcome.lost[stream, default: []].append(candidate.id)
                continue
            }
            if deadLettering.contains(key) { continue }
            if var entry = held[key] {
                entry.leaseFrom = max(entry.leaseFrom, sentAt)  // its lease had run out; the claim renewed it
                held[key] = entry
                continue
            }
            if candidate.consumer != me { outcome.claimed[stream, default: []].append(candidate) }
            admit(Entry(key: key, fields: entryFields, deliveryCount: candidate.deliveryCount + 1), sentAt: sentAt, into: &outcome)
        }
        if candidates.count >= requested, let last = candidates.last {
            reclaimCursor[stream] = last.id  // more may be idle: go on at once
            nextReclaim = now
        } else {
            reclaimCursor[stream] = nil
            reclaimStream = (stream + 1) % settings.streams.count
            nextReclaim = reclaimStream == 0 ? now + settings.claimInterval : now
        }
        return outcome
    }

    /// A reclaim failed: tried again after the interval.
    mutating func reclaimFailed(now: Instant) {
        reclaiming = false
        reclaimReserved = 0
        nextReclaim = now + settings.claimInterval
    }

    // MARK: Closing

    /// Stops reading, reclaiming and renewing; acknowledgements queued still go out. Returns the held entries to
    /// release (as ``fail(_:now:)`` does), per stream; they are no longer held.
    mutating func close(now: Instant) -> [Int: [StreamEntryID]] {
        phase = .closed
        var release: [Int: [StreamEntryID]] = [:]
        for (key, entry) in held where !entry.acknowledging {
            held[key] = nil
            guard let claimIdle = settings.claimIdle, now < entry.leaseFrom + claimIdle else { continue }
            release[key.stream, default: []].append(key.id)
        }
        for stream in release.keys { release[stream]!.sort() }
        return release
    }

    // MARK: Helpers

    private mutating func admit(_ entry: Entry, sentAt: Instant, into outcome: inout Outcome) {
        if let max = settings.maxDeliveries, entry.deliveryCount > max {
            deadLettering.insert(entry.key)
            outcome.deadLetter.append(entry)
        } else {
            held[entry.key] = Held(leaseFrom: sentAt)
            outcome.deliver.append(entry)
        }
    }

    private mutating func succeeded() -> [Event] {
        failures = 0
        backoffUntil = nil
        guard disconnected else { return [] }
        disconnected = false
        return [.reconnected]
    }

    private mutating func backOff(_ now: Instant) {
        // 50 ms, doubling to 2 s: a persistent failure costs one command per step, never a busy loop.
        let delay = Duration.milliseconds(50 * (1 << min(failures, 6)))
        failures += 1
        backoffUntil = now + min(delay, .seconds(2))
    }

    static func isConnectionLoss(_ error: RedisError) -> Bool {
        switch error.code {
        case .connectionClosed, .timeout, .connectionRefused, .hostUnreachable, .nameResolutionFailed, .overloaded: true
        default: false
        }
    }

    /// For a `NOGROUP` error, the streams it names (`No such key 's' or consumer group 'g'`), or an empty set when it
    /// names none of them; `nil` for any other error.
    static func missingGroups(_ error: RedisError, streams: [RedisName]) -> Set<Int>? {
        guard error.code == .serverError, error.message.hasPrefix("NOGROUP") else { return nil }
        var named: Set<Int> = []
        for (index, stream) in streams.enumerated() {
            guard let name = stream.string else { continue }
            if error.message.contains("key '\(name)'") { named.insert(index) }
        }
        return named
    }
}
