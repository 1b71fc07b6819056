import Logging

/// Carries out what ``StreamReaderStateMachine`` decides, for one ``StreamReader``: one loop that resolves `$`,
/// reads with `XREAD ... BLOCK` when caught up, and catches up with a stream snapshot when behind. Every decision
/// is the machine's; this file only sends commands and reports replies.
final class StreamReaderCore: Sendable {
    typealias Machine = StreamReaderStateMachine

    let connection: RedisConnection
    let streams: [RedisName]
    let queue = StreamDeliveryQueue<StreamEntry>(owner: "StreamReader")
    let events = EventBroadcaster<StreamReaderEvent>(replaysLast: false)
    private let logger: Logger
    private let machine: Locked<Machine>
    private let streamIndex: [RedisName: Int]
    /// `BLOCK ms STREAMS s1 s2 ...` and `STREAMS s1 s2 ...`: the middle of a blocking read and of a catch-up.
    private let blockingSuffix: [RedisArgument]
    private let streamsArgument: [RedisArgument]
    private let room = WakeSignal()
    private let reading = Locked<Task<Void, Never>?>(nil)
    private let closing = Locked<Task<Void, Never>?>(nil)

    init(connection: RedisConnection, streams: [RedisName], start: [StreamEntryID?], options: StreamReader.Options, logger: Logger) {
        self.connection = connection
        self.streams = streams
        self.logger = logger
        self.machine = Locked(Machine(
            settings: Machine.Settings(streamCount: streams.count, bufferSize: options.bufferSize), start: start))
        self.streamIndex = Dictionary(streams.enumerated().map { ($0.element, $0.offset) }, uniquingKeysWith: { first, _ in first })
        self.streamsArgument = ["STREAMS"] + streams.map(\.redisArgument)
        self.blockingSuffix = ["BLOCK", RedisArgument(Int(options.blockTimeout / .milliseconds(1)))] + streamsArgument
    }

    /// Resolves `$` to each stream's last ID, throwing any error (a wrong type, a permission, an unreachable
    /// server), then starts reading: whatever is appended once this returns is read.
    func start() async throws(RedisError) {
        if case .resolveNewest(let unresolved) = machine.withLock({ $0.nextAction(now: .now) }) {
            var resolved: [Int: StreamReplies.StreamInfo?] = [:]
            for stream in unresolved { resolved[stream] = try await info(stream) }
            _ = machine.withLock { $0.newestResolved(resolved) }
        }
        // On the connection's loop: a reply resumes the loop on the thread that read it.
        let task = Task(executorPreference: connection.taskExecutor) { await self.readLoop() }
        reading.withLock { $0 = task }
    }

    var bufferedCount: Int { machine.withLock { $0.buffered } }

    /// The application took an entry: a read waiting for room may go.
    func taken() {
        if machine.withLock({ machine in machine.taken(); return machine.hasRoom }) { room.signal() }
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
        machine.withLock { $0.close() }
        let task = reading.withLock { $0 }
        task?.cancel()
        room.signal()
        await task?.value
        queue.finish(nil)  // what was read is still delivered, then the loop ends
        await connection.close()
        events.finish()
        logger.debug("stream reader closed", metadata: ["streams": "\(streams.map(\.description))"])
    }

    // MARK: Reading

    private func readLoop() async {
        while !Task.isCancelled {
            switch machine.withLock({ $0.nextAction(now: .now) }) {
            case .stop:
                return
            case .waitForRoom:
                await room.wait()
            case .wait(let until):
                try? await Task.sleep(until: until, clock: .continuous)
            case .resolveNewest(let unresolved):
                do throws(RedisError) {
                    var resolved: [Int: StreamReplies.StreamInfo?] = [:]
                    for stream in unresolved { resolved[stream] = try await info(stream) }
                    report(machine.withLock { $0.newestResolved(resolved) })
                } catch {
                    failed(error)
                }
            case .read(let count, let after, let catchUp):
                await read(count: count, after: after, catchUp: catchUp)
            }
        }
    }

    /// `XINFO STREAM`; `nil` for a stream that does not exist.
    private func info(_ stream: Int) async throws(RedisError) -> StreamReplies.StreamInfo? {
        do {
            return try StreamReplies.streamInfo(try await connection.send(["XINFO", "STREAM", streams[stream].redisArgument]))
        } catch where error.code == .serverError && error.message.hasPrefix("ERR no such key") {
            return nil
        }
    }

    /// A transaction's `XINFO STREAM` reply; `nil` for a stream that does not exist.
    private static func info(_ reply: RedisValue) throws(RedisError) -> StreamReplies.StreamInfo? {
        if case .error(let message) = reply {
            if message.hasPrefix("ERR no such key") { return nil }
            throw RedisError.server(message)
        }
        return try StreamReplies.streamInfo(reply)
    }

    /// Caught up, a blocking `XREAD` on a connection of its own; behind, one transaction on the shared connection:
    /// each stream's `XINFO STREAM`, then the `XREAD` (without `BLOCK`), so the counts and the entries agree.
    private func read(count: Int, after: [StreamEntryID], catchUp: Bool) async {
        let read: [RedisArgument] = ["XREAD", "COUNT", RedisArgument(count)]
        let positions = after.map(\.redisArgument)
        do throws(RedisError) {
            let reply: RedisValue
            var snapshots: [Int: StreamReplies.StreamInfo?] = [:]
            if catchUp {
                let replies = try await connection.transaction(
                    streams.map { ["XINFO", "STREAM", $0.redisArgument] } + [read + streamsArgument + positions])
                for stream in streams.indices { snapshots[stream] = try Self.info(replies[stream]) }
                reply = replies[streams.count]
                if case .error(let message) = reply { throw RedisError.server(message) }
            } else {
                reply = try await connection.sendBlocking(read + blockingSuffix + positions)
            }
            var entries: [(stream: Int, entries: [Machine.RawEntry])] = []
            for (name, streamEntries) in try StreamReplies.read(reply) {
                guard let index = streamIndex[RedisName(bytes: name)] else { continue }
                entries.append((index, streamEntries))
            }
            let (deliver, reported) = machine.withLock { $0.entriesRead(entries, requested: count, snapshots: snapshots) }
            report(reported)
            queue.push(deliver.map { StreamEntry(stream: streams[$0.stream], id: $0.id, fields: $0.fields) })
        } catch {
            failed(error)
        }
    }

    /// A command failed: the machine decides; a connection closed for good (reconnecting disabled or given up, a
    /// refused password) ends the reader with the error it closed with.
    private func failed(_ error: RedisError) {
        report(machine.withLock { $0.failed(error, now: .now) })
        guard let closed = connection.closedError, error.code != .cancelled else { return }
        queue.finish(closed)
        closeInBackground()
    }

    // MARK: Events

    private func report(_ reported: [Machine.Event]) {
        for event in reported {
            let mapped: StreamReaderEvent = switch event {
            case .disconnected(let error): .disconnected(cause: error)
            case .reconnected: .reconnected
            case .lost(let stream, let count, let after): .lost(stream: streams[stream], count: count, after: after)
            case .failed(let error): .failed(error)
            }
            switch mapped {
            case .lost, .failed: logger.warning("stream reader: \(mapped)")
            default: logger.info("stream reader: \(mapped)")
            }
            events.send(mapped)
        }
    }
}
