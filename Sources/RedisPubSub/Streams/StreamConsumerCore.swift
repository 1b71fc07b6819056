import Logging
import Synchronization

/// Carries out what ``StreamConsumerStateMachine`` decides, for one ``StreamConsumer``: a read loop (group
/// creation, own pending entries, new entries with `BLOCK`), a maintenance loop (lease renewals and reclaims), and
/// acknowledgement flushes. Every decision is the machine's; this file only sends commands and reports replies.
final class StreamConsumerCore: Sendable {
    typealias Machine = StreamConsumerStateMachine

    let connection: RedisConnection
    let streams: [RedisName]
    let group: RedisName
    let consumer: RedisName
    let options: StreamConsumer.Options
    let queue = StreamDeliveryQueue<StreamMessage>(owner: "StreamConsumer")
    let events = EventBroadcaster<StreamConsumerEvent>(replaysLast: false)
    private let logger: Logger
    private let machine: Locked<Machine>
    private let streamIndex: [RedisName: Int]
    /// `BLOCK ms STREAMS s1 s2 ... > > ...`: the end of every read of new entries.
    private let readNewSuffix: [RedisArgument]
    private let room = WakeSignal()
    private let tasks = Locked<[Task<Void, Never>]>([])
    private let flush = Locked<Task<Void, Never>?>(nil)
    private let closing = Locked<Task<Void, Never>?>(nil)

    init(
        connection: RedisConnection, streams: [RedisName], group: RedisName, consumer: RedisName,
        options: StreamConsumer.Options, logger: Logger
    ) {
        self.connection = connection
        self.streams = streams
        self.group = group
        self.consumer = consumer
        self.options = options
        self.logger = logger
        let claimIdle = options.claimIdle
        let settings = Machine.Settings(
            streams: streams, prefetch: options.prefetch, claimIdle: claimIdle, claimInterval: options.claimInterval,
            leaseInterval: claimIdle.map { $0 / 3 } ?? .seconds(1), maxDeliveries: options.maxDeliveries,
            removeIdleConsumersAfter: options.removeIdleConsumersAfter)
        self.machine = Locked(Machine(settings: settings, consumer: consumer, now: .now))
        self.streamIndex = Dictionary(streams.enumerated().map { ($0.element, $0.offset) }, uniquingKeysWith: { first, _ in first })
        self.readNewSuffix = ["BLOCK", RedisArgument(Int(options.blockTimeout / .milliseconds(1))), "STREAMS"]
            + streams.map(\.redisArgument) + Array(repeating: ">", count: streams.count)
    }

    var heldCount: Int { machine.withLock { $0.heldCount } }

    // MARK: Starting and closing

    /// Creates the groups, throwing any error (a wrong type, a permission, an unreachable server), then starts the
    /// loops.
    func start() async throws(RedisError) {
        var created: [Int] = []
        for index in streams.indices {
            if try await createGroup(index, start: options.start.argument) { created.append(index) }
        }
        _ = machine.withLock { $0.groupsReady(Array(streams.indices), created: created, now: .now) }
        // On the connection's loop: a reply resumes the task on the thread that read it, instead of waking another
        // (a thread wake-up per read and per acknowledgement cost more than the rest of the work together).
        let loop = connection.taskExecutor
        let reading = Task(executorPreference: loop) { await self.readLoop() }
        let maintaining = Task(executorPreference: loop) { await self.maintenanceLoop() }
        tasks.withLock { $0 = [reading, maintaining] }
    }

    func closeInBackground() {
        Task { await self.close() }
    }

    func close() async {
        let task = closing.withLock { closing -> Task<Void, Never> in
            if let closing { return closing }
            let task = Task { await self.shutDown() }
            closing = task
            return task
        }
        await task.value
    }

    private func shutDown() async {
        // The loops stop first, so that whatever a reclaim in flight took is held, and released below.
        let loops = tasks.withLock { $0 }
        for task in loops { task.cancel() }
        room.signal()
        for task in loops { await task.value }
        let release = machine.withLock { $0.close(now: .now) }
        _ = queue.drain()  // held, so released below
        queue.finish(nil)
        // Acknowledgements made before the close go out, unless the server stays unreachable for a command timeout.
        await waitForAcknowledgements(until: .now + connection.configuration.commandTimeout)
        await renew(release, idle: options.claimIdle)
        await connection.close()
        events.finish()
        logger.debug("stream consumer closed", metadata: ["group": "\(group)", "consumer": "\(consumer)"])
    }

    // MARK: Reading

    private func readLoop() async {
        while !Task.isCancelled {
            let action = machine.withLock { $0.nextRead(now: .now) }
            switch action {
            case .stop:
                return
            case .waitForRoom:
                await room.wait()
            case .wait(let until):
                try? await Task.sleep(until: until, clock: .continuous)
            case .createGroups(let creations):
                await createGroups(creations)
            case .readOwn(let stream, let after, let count):
                await readOwn(stream: stream, after: after, count: count)
            case .readNew(let count):
                await readNew(count: count)
            }
        }
    }

    /// `XGROUP CREATE`; returns whether it created the group (`false` for `BUSYGROUP`: it existed).
    private func createGroup(_ stream: Int, start: RedisArgument) async throws(RedisError) -> Bool {
        do {
            try await connection.send([
                "XGROUP", "CREATE", streams[stream].redisArgument, group.redisArgument, start, "MKSTREAM",
            ])
            return true
        } catch where error.message.hasPrefix("BUSYGROUP") {
            return false
        }
    }

    private func createGroups(_ creations: [Machine.GroupCreation]) async {
        var ready: [Int] = []
        var created: [Int] = []
        var failure: RedisError?
        for creation in creations {
            do throws(RedisError) {
                if try await createGroup(creation.stream, start: creation.fromBeginning ? "0" : options.start.argument) {
                    created.append(creation.stream)
                }
                ready.append(creation.stream)
            } catch {
                failure = error
                break
            }
        }
        let now = ContinuousClock.now
        var reported = machine.withLock { $0.groupsReady(ready, created: created, now: now) }
        if let failure { reported += machine.withLock { $0.readFailed(failure, now: now) } }
        report(reported)
    }

    private func readOwn(stream: Int, after: StreamEntryID, count: Int) async {
        let name = streams[stream].redisArgument
        let sentAt = ContinuousClock.now
        do throws(RedisError) {
            // One transaction: the entries and their exact delivery counts, with nothing in between.
            let replies = try await connection.transaction([
                ["XREADGROUP", "GROUP", group.redisArgument, consumer.redisArgument, RedisArgument("COUNT"),
                 RedisArgument(count), "STREAMS", name, after.redisArgument],
                ["XPENDING", name, group.redisArgument, RedisArgument("(\(after)"), "+", RedisArgument(count),
                 consumer.redisArgument],
            ])
            for reply in replies { if case .error(let message) = reply { throw RedisError.server(message) } }
            let entries = try StreamReplies.read(replies[0]).first?.entries ?? []
            let pending = try StreamReplies.pending(replies[1])
            let counts = Dictionary(pending.map { ($0.id, $0.deliveryCount) }, uniquingKeysWith: { first, _ in first })
            let (outcome, reported) = machine.withLock {
                $0.ownEntriesRead(
                    stream: stream, requested: count, entries: entries, deliveryCounts: counts, sentAt: sentAt, now: .now)
            }
            report(reported)
            await carryOut(outcome)
        } catch {
            readFailed(error)
        }
    }

    /// A read failed: the machine decides; a connection closed for good (reconnecting disabled or given up, a
    /// refused password) ends the consumer with the error it closed with (the read's own may be a later symptom,
    /// such as a refused connect).
    private func readFailed(_ error: RedisError) {
        report(machine.withLock { $0.readFailed(error, now: .now) })
        guard let closed = connection.closedError, error.code != .cancelled else { return }
        queue.finish(closed)
        closeInBackground()
    }

    private func readNew(count: Int) async {
        let command: [RedisArgument] = [
            "XREADGROUP", "GROUP", group.redisArgument, consumer.redisArgument, "COUNT", RedisArgument(count),
        ] + readNewSuffix
        let sentAt = ContinuousClock.now
        do throws(RedisError) {
            let reply = try await connection.sendBlocking(command)
            var read: [(stream: Int, entries: [Machine.RawEntry])] = []
            for (name, entries) in try StreamReplies.read(reply) {
                guard let index = streamIndex[RedisName(bytes: name)] else { continue }
                read.append((index, entries))
            }
            let (outcome, reported) = machine.withLock { $0.newEntriesRead(read, sentAt: sentAt, now: .now) }
            report(reported)
            await carryOut(outcome)
        } catch {
            readFailed(error)
        }
    }

    // MARK: Outcomes

    private func carryOut(_ outcome: Machine.Outcome) async {
        if !outcome.deliver.isEmpty {
            queue.push(outcome.deliver.map { entry in
                StreamMessage(
                    stream: streams[entry.key.stream], id: entry.key.id, fields: entry.fields,
                    deliveryCount: entry.deliveryCount, settlement: StreamSettlement(key: entry.key, consumer: self))
            })
        }
        for (stream, candidates) in outcome.claimed.sorted(by: { $0.key < $1.key }) {
            var from: [RedisName] = []
            for candidate in candidates where !from.contains(candidate.consumer) { from.append(candidate.consumer) }
            send(.claimed(stream: streams[stream], ids: candidates.map(\.id), from: from))
        }
        for (stream, ids) in outcome.lost.sorted(by: { $0.key < $1.key }) {
            send(.lost(stream: streams[stream], ids: ids))
            // Deleted entries read from the own pending list stay in it until acknowledged.
            if outcome.acknowledgeLost { _ = try? await connection.send(["XACK", streams[stream].redisArgument, group.redisArgument] + ids.map(\.redisArgument)) }
        }
        for entry in outcome.deadLetter { await deadLetter(entry) }
    }

    /// Appends the entry to the dead-letter stream, then acknowledges it, in one script: if the append fails, the
    /// script stops before the acknowledgement (a transaction would have acknowledged it anyway), and an entry that
    /// is no longer pending (acknowledged or moved meanwhile) is not appended twice.
    private static let deadLetterScript = """
        local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
        if #pending == 0 then return false end
        local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
        redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
        return id
        """

    private func deadLetter(_ entry: Machine.Entry) async {
        let stream = streams[entry.key.stream]
        let target = options.deadLetterStream ?? RedisName(bytes: stream.bytes + Array(":dead-letter".utf8))
        var command: [RedisArgument] = [
            "EVAL", RedisArgument(Self.deadLetterScript), "2", stream.redisArgument, target.redisArgument,
            group.redisArgument, entry.key.id.redisArgument,
        ]
        for field in entry.fields { command += [field.name.redisArgument, RedisArgument(field.value)] }
        let reason = "delivered \(entry.deliveryCount) times, more than maxDeliveries (\(options.maxDeliveries ?? 0))"
        command += [
            "original-stream", stream.redisArgument, "original-id", entry.key.id.redisArgument,
            "delivery-count", RedisArgument(entry.deliveryCount), "reason", RedisArgument(reason),
        ]
        do throws(RedisError) {
            let reply = try await connection.send(command)
            if let newID = reply.bytes.flatMap(StreamEntryID.init(bytes:)) {
                send(.deadLettered(
                    stream: stream, id: entry.key.id, deliveryCount: entry.deliveryCount, deadLetterStream: target,
                    deadLetterID: newID))
            }  // else no longer pending: nothing to move
        } catch {
            // Nothing was acknowledged: the entry stays pending, and is reclaimed and moved again later.
            send(.failed(error))
        }
        machine.withLock { $0.deadLettered(entry.key) }
        room.signal()
    }

    // MARK: Acknowledgements

    func acknowledge(_ key: Machine.Key) {
        let (startFlush, canRead) = machine.withLock { machine in (machine.acknowledge(key), machine.hasRoomToRead) }
        if canRead { room.signal() }  // a read waiting for room need not wait for the server's confirmation
        guard startFlush else { return }
        flush.withLock { flush in
            flush = Task(executorPreference: connection.taskExecutor) { await self.flushAcknowledgements() }
        }
    }

    func fail(_ key: Machine.Key) {
        let release = machine.withLock { $0.fail(key, now: .now) }
        room.signal()
        guard release else { return }
        Task(executorPreference: connection.taskExecutor) { await self.renew([key.stream: [key.id]], idle: self.options.claimIdle) }
    }

    private func waitForAcknowledgements(until deadline: ContinuousClock.Instant) async {
        while let pending = flush.withLock({ $0 }), ContinuousClock.now < deadline {
            let finished = await withTaskGroup(of: Bool.self) { group in
                group.addTask { await pending.value; return true }
                group.addTask { try? await Task.sleep(until: deadline, clock: .continuous); return false }
                let first = await group.next() ?? false
                group.cancelAll()
                return first
            }
            guard finished, flush.withLock({ $0 != pending }) else { return }
        }
    }

    private func flushAcknowledgements() async {
        while true {
            let batch = machine.withLock { $0.takeAcknowledgements() }
            if batch.isEmpty { return }
            var bytes: [UInt8] = []
            for (stream, ids) in batch.sorted(by: { $0.key < $1.key }) {
                RESP.append(["XACK", streams[stream].redisArgument, group.redisArgument] + ids.map(\.redisArgument), to: &bytes)
            }
            var failure: RedisError?
            do throws(RedisError) {
                _ = try await connection.sendBatch(encoded: bytes, commands: batch.count)
            } catch where Machine.isConnectionLoss(error) {
                failure = error
            } catch {
                // An error reply (NOGROUP: the group and its pending list are gone): nothing is left to acknowledge.
                send(.failed(error))
            }
            let (more, reported) = machine.withLock { $0.acknowledgementsSent(failure: failure) }
            report(reported)
            if failure == nil {
                room.signal()
                if !more { return }
            } else {
                if connection.isClosedForGood { return }
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    // MARK: Leases and reclaiming

    private func maintenanceLoop() async {
        guard let claimIdle = options.claimIdle else { return }
        let leaseInterval = claimIdle / 3
        while !Task.isCancelled {
            let now = ContinuousClock.now
            let leases = machine.withLock { $0.leasesDue(now: now) }
            if !leases.isEmpty {
                let sentAt = ContinuousClock.now
                let renewed = await renew(leases, idle: nil)
                machine.withLock { $0.leasesRenewed(leases, succeeded: renewed, sentAt: sentAt) }
            }
            if let due = machine.withLock({ $0.reclaimDue(now: .now) }) {
                await reclaim(stream: due.stream, after: due.after, count: due.count)
            }
            if let due = machine.withLock({ $0.consumerRemovalDue(now: .now) }) {
                await removeIdleConsumers(stream: due.stream, minimumIdle: due.minimumIdle)
            }
            let next = machine.withLock { machine in
                [machine.nextReclaimAt, machine.nextLeaseAt, machine.nextConsumerRemovalAt].compactMap { $0 }.min()
            }
            let later = ContinuousClock.now + leaseInterval  // entries held from now on are due no sooner
            let wake = max(min(next ?? later, later), ContinuousClock.now + .milliseconds(1))
            try? await Task.sleep(until: wake, clock: .continuous)
        }
    }

    /// `XCLAIM stream group me 0 ids... [IDLE ms] JUSTID` per stream: renews held entries' leases (`idle` `nil`),
    /// or releases them for reclaiming (`idle` set). Returns whether every command succeeded.
    @discardableResult
    private func renew(_ ids: [Int: [StreamEntryID]], idle: Duration?) async -> Bool {
        var succeeded = true
        for (stream, ids) in ids.sorted(by: { $0.key < $1.key }) where !ids.isEmpty {
            var command: [RedisArgument] = [
                "XCLAIM", streams[stream].redisArgument, group.redisArgument, consumer.redisArgument, "0",
            ]
            command += ids.map(\.redisArgument)
            if let idle { command += ["IDLE", RedisArgument(Int(idle / .milliseconds(1)))] }
            command.append("JUSTID")
            do throws(RedisError) {
                _ = try await connection.send(command)
            } catch {
                succeeded = false
            }
        }
        return succeeded
    }

    /// The pending entries idle at least `claimIdle` and what `XCLAIM` returned for them, atomically.
    private static let reclaimScript = """
        local pending = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[2], ARGV[3], '+', ARGV[4])
        if #pending == 0 then return {pending, {}} end
        local ids = {}
        for i, entry in ipairs(pending) do ids[i] = entry[1] end
        return {pending, redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[5], ARGV[2], unpack(ids))}
        """

    private func reclaim(stream: Int, after: StreamEntryID?, count: Int) async {
        guard let claimIdle = options.claimIdle else { return }
        let sentAt = ContinuousClock.now
        do throws(RedisError) {
            // Not interrupted once sent (a close waits for it): the server claims the entries whatever the client
            // does, and a discarded reply would leave them claimed, unreleased, for a whole claimIdle.
            let reply = try await connection.sendUninterruptible(encoded: RESP.encode([
                "EVAL", RedisArgument(Self.reclaimScript), "1", streams[stream].redisArgument, group.redisArgument,
                RedisArgument(Int(claimIdle / .milliseconds(1))), RedisArgument(after.map { "(\($0)" } ?? "-"),
                RedisArgument(count), consumer.redisArgument,
            ]))
            let (candidates, claimed) = try StreamReplies.reclaim(reply)
            let outcome = machine.withLock {
                $0.reclaimed(stream: stream, requested: count, candidates: candidates, claimed: claimed, sentAt: sentAt, now: .now)
            }
            room.signal()  // the reclaim's reserved room is free again: a read may be waiting for it
            await carryOut(outcome)
        } catch {
            machine.withLock { $0.reclaimFailed(now: .now) }
            room.signal()
            // NOGROUP is the read loop's to report; a lost connection too.
            if Machine.missingGroups(error, streams: streams) == nil, !Machine.isConnectionLoss(error), error.code != .cancelled {
                send(.failed(error))
            }
        }
    }

    /// Removes the group's other consumers idle at least `ARGV[2]` ms with nothing pending, atomically (a consumer
    /// cannot take an entry between the check and the removal), and returns their names.
    private static let removeIdleConsumersScript = """
        local removed = {}
        if redis.call('EXISTS', KEYS[1]) == 0 then return removed end
        for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
            local fields = {}
            for i = 1, #consumer, 2 do fields[consumer[i]] = consumer[i + 1] end
            if fields['pending'] == 0 and fields['idle'] >= tonumber(ARGV[2]) and fields['name'] ~= ARGV[3] then
                redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], fields['name'])
                removed[#removed + 1] = fields['name']
            end
        end
        return removed
        """

    private func removeIdleConsumers(stream: Int, minimumIdle: Duration) async {
        do throws(RedisError) {
            let reply = try await connection.send([
                "EVAL", RedisArgument(Self.removeIdleConsumersScript), "1", streams[stream].redisArgument,
                group.redisArgument, RedisArgument(Int(minimumIdle / .milliseconds(1))), consumer.redisArgument,
            ])
            let removed = (reply.array ?? []).compactMap(\.bytes).map { RedisName(bytes: $0) }
            if !removed.isEmpty { send(.consumersRemoved(stream: streams[stream], consumers: removed)) }
        } catch {
            // NOGROUP is the read loop's to report; a lost connection too. Anything else (an ACL's NOPERM, scripting
            // disabled) is reported once, and the search stops: it is a housekeeping option, not worth a warning a
            // minute.
            guard Machine.missingGroups(error, streams: streams) == nil, !error.message.contains("NOGROUP"),
                !Machine.isConnectionLoss(error), error.code != .cancelled
            else { return }
            machine.withLock { $0.consumerRemovalWasRefused() }
            send(.failed(error))
        }
    }

    // MARK: Events

    private func report(_ reported: [Machine.Event]) {
        for event in reported {
            switch event {
            case .disconnected(let error): send(.disconnected(cause: error))
            case .reconnected: send(.reconnected)
            case .groupMissing(let stream): send(.groupMissing(stream: streams[stream]))
            case .groupCreated(let stream): send(.groupCreated(stream: streams[stream]))
            case .failed(let error): send(.failed(error))
            }
        }
    }

    private func send(_ event: StreamConsumerEvent) {
        switch event {
        case .lost, .deadLettered, .failed, .groupMissing: logger.warning("stream consumer: \(event)")
        default: logger.info("stream consumer: \(event)")
        }
        events.send(event)
    }
}
