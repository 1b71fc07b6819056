public import Logging

/// Reads Redis Streams without a consumer group (`XREAD`): every reader gets every entry, in order, from where it
/// started, like a subscriber that can also look back.
///
/// ```swift
/// let reader = try await StreamReader.connect(to: .fromEnvironment(), streams: ["prices"], from: .newEntries)
/// for try await entry in reader {
///     show(entry.string)
///     lastSeen = entry.id   // keep it to resume with .after(lastSeen) after a restart
/// }
/// ```
///
/// A reader always reads after the last entry it read, per stream: after a reconnect it goes on from there, so an
/// entry still in the stream is never skipped or delivered twice. Entries deleted before it read them (trimmed with
/// `MAXLEN`/`MINID` while it was disconnected or its application was slow) cannot be delivered: they are reported as
/// ``StreamReaderEvent/lost(stream:count:after:)``. It reads ahead at most ``Options/bufferSize`` entries, so a
/// slow application holds little memory and the server keeps the rest.
///
/// Nothing is acknowledged and the server keeps no state for a reader: to resume after a restart, keep the last
/// ``StreamEntry/id`` you processed (per stream, when you read several) and start with ``Start/after(_:)`` (or
/// ``Start/afterEach(_:)``). For work that must be done once by one of several processes, use a ``StreamConsumer``.
///
/// A reader reads on a connection of its own (blocking reads; see ``RedisConnection/sendBlocking(_:)``) and asks
/// for stream information on another, both with the configuration's endpoint, credentials and TLS.
public final class StreamReader: AsyncSequence, Sendable {
    /// Each element is one entry.
    public typealias Element = StreamEntry
    /// The error that ends the sequence.
    public typealias Failure = RedisError

    let core: StreamReaderCore

    private init(core: StreamReaderCore) {
        self.core = core
    }

    /// A reader that goes away closes, in the background.
    deinit {
        core.closeInBackground()
    }

    /// Where a reader starts.
    public enum Start: Sendable, Hashable {
        /// Entries appended after ``StreamReader/connect(to:streams:from:options:logger:)`` returns (`$`, resolved to
        /// each stream's last ID at the start, so a reconnect cannot skip what was appended meanwhile).
        case newEntries
        /// Every entry the streams hold (`0`).
        case beginning
        /// Entries after this ID, in every stream: for one stream, the last entry a previous reader processed. With
        /// several streams the same ID applies to each, as a time (entries appended after its milliseconds): to
        /// resume each stream where it was left, use ``afterEach(_:)`` with each one's last ID.
        case after(StreamEntryID)
        /// Entries after the ID given for each stream; a stream without one starts with its new entries.
        case afterEach([RedisName: StreamEntryID])
    }

    /// How a reader reads.
    public struct Options: Sendable, Hashable {
        /// The most entries read and not yet taken by the loop. A read waits until half of it is free (or nothing
        /// is buffered), then asks for the room left, shared between the streams (with more streams than free room,
        /// at least one entry each: a read may then exceed it by up to one entry per stream).
        public var bufferSize: Int
        /// How long one read waits for new entries before it asks again (`XREAD ... BLOCK`).
        public var blockTimeout: Duration

        /// Options; the defaults suit most services.
        public init(bufferSize: Int = 100, blockTimeout: Duration = .seconds(2)) {
            self.bufferSize = bufferSize
            self.blockTimeout = blockTimeout
        }

        func validate(streams: [RedisName], start: Start) throws(RedisError) {
            func invalid(_ text: String) -> RedisError { RedisError(.invalidConfiguration, text) }
            guard !streams.isEmpty else { throw invalid("a StreamReader needs at least one stream") }
            guard Set(streams).count == streams.count else { throw invalid("a stream is named twice") }
            guard bufferSize > 0 else { throw invalid("bufferSize must be at least 1") }
            guard blockTimeout >= .milliseconds(1), blockTimeout <= .seconds(86_400) else {
                throw invalid("blockTimeout must be between 1 ms and 24 hours")
            }
            if case .afterEach(let ids) = start, let stray = ids.keys.first(where: { !streams.contains($0) }) {
                throw invalid("the start names \(stray), which is not one of the streams read")
            }
        }
    }

    /// Connects and starts reading `streams` from `start`; returns once the start is fixed (for
    /// ``Start/newEntries``, each stream's last ID is known), so every entry appended after it returns is read.
    ///
    /// - Parameters:
    ///   - configuration: the server, credentials and TLS, as for ``RedisConnection/connect(to:logger:)``.
    ///   - streams: the streams' keys; one read covers them all. A stream that does not exist yet is read from its
    ///     first entry once it does.
    ///   - start: where to start; see ``Start``.
    ///   - options: the read-ahead bound and the block timeout; see ``Options``.
    ///   - logger: where the reader logs losses, failures and reconnects; nothing by default.
    /// - Throws: ``RedisError``: as ``RedisConnection/connect(to:logger:)``; ``RedisError/Code/serverError`` when a
    ///   key holds something else than a stream (`WRONGTYPE`); ``RedisError/Code/permissionDenied`` for an ACL that
    ///   forbids the stream commands; ``RedisError/Code/invalidConfiguration`` for invalid options.
    public static func connect(
        to configuration: RedisConfiguration,
        streams: [RedisName],
        from start: Start = .newEntries,
        options: Options = Options(),
        logger: Logger = RedisConnection.disabledLogger
    ) async throws(RedisError) -> StreamReader {
        try options.validate(streams: streams, start: start)
        let positions: [StreamEntryID?] = streams.map { stream in
            switch start {
            case .newEntries: nil
            case .beginning: .zero
            case .after(let id): id
            case .afterEach(let ids): ids[stream]
            }
        }
        let connection = try await RedisConnection.connect(to: configuration, logger: logger)
        let core = StreamReaderCore(connection: connection, streams: streams, start: positions, options: options, logger: logger)
        do {
            try await core.start()
        } catch {
            await connection.close()
            throw error
        }
        return StreamReader(core: core)
    }

    /// The reader's disconnections, losses and failures, from now on; see ``StreamReaderEvent``. Each call returns a
    /// new sequence; it ends when the reader is closed.
    public func events() -> AsyncStream<StreamReaderEvent> { core.events.stream() }

    /// The event-loop thread as a task executor; see ``RedisConnection/taskExecutor``.
    public var taskExecutor: any TaskExecutor { core.connection.taskExecutor }

    /// Entries read and not yet taken by the loop (at most about ``Options/bufferSize``).
    public var bufferedCount: Int { core.bufferedCount }

    /// Closes: stops reading, lets the loop take what was already read, then ends it normally, and closes the
    /// connections. Calling it again waits for the first call.
    public func close() async {
        await core.close()
    }

    /// The iterator. One task iterates at a time; a second concurrent reader fails with
    /// ``RedisError/Code/invalidArgument``.
    public func makeAsyncIterator() -> Iterator {
        Iterator(reader: self)
    }

    /// Returns the entries in the order the reads returned them (per stream, in ID order).
    public struct Iterator: AsyncIteratorProtocol {
        private let reader: StreamReader

        init(reader: StreamReader) {
            self.reader = reader
        }

        /// The next entry; `nil` once the reader is closed, or when the task is cancelled (which closes it).
        ///
        /// - Throws: ``RedisError/Code/invalidArgument`` when another task is iterating; the error the connection
        ///   closed with for good (reconnecting given up, a refused password).
        public mutating func next() async throws(RedisError) -> StreamEntry? {
            try await next(isolation: nil)
        }

        /// The next entry, staying on the caller's actor; see ``next()``.
        public mutating func next(isolation actor: isolated (any Actor)? = #isolation) async throws(RedisError) -> StreamEntry? {
            let core = reader.core
            let entry = try await core.queue.next(isolation: actor) { core.closeInBackground() }
            if entry != nil { core.taken() }
            return entry
        }
    }
}

@available(*, unavailable, message: "an iterator belongs to the task that iterates")
extension StreamReader.Iterator: Sendable {}
