public import Logging

/// Reads Redis Streams through a consumer group, at least once: every entry appended is delivered to some consumer
/// of the group until one acknowledges it, whatever fails in between (a consumer crashing, the connection dropping,
/// a handler too slow, an entry that always fails).
///
/// ```swift
/// let consumer = try await StreamConsumer.connect(
///     to: .fromEnvironment(), streams: ["orders"], group: "billing", consumer: "worker-1")
/// for try await message in consumer {
///     try await bill(message.decode(Order.self))
///     message.ack()
/// }
/// ```
///
/// What it does for you, by default:
/// - **Bounded prefetch**: it holds at most about ``Options/prefetch`` unacknowledged entries, so a stalled
///   consumer holds little that others must wait for.
/// - **Own pending entries first**: on start and after every reconnect it first reads again what the group already
///   delivered to this consumer name and was never acknowledged (a crashed process restarted under the same name
///   takes up its work), then new entries.
/// - **Reclaiming**: entries idle longer than ``Options/claimIdle`` in any consumer's pending list (a consumer that
///   crashed for good) are taken over, continuously, and reported as ``StreamConsumerEvent/claimed(stream:ids:from:)``.
/// - **Leases**: entries this consumer holds are kept fresh (their idle time reset) while it runs, however long the
///   handler takes, so no other consumer reclaims them from under it.
/// - **Dead letters**: an entry delivered more than ``Options/maxDeliveries`` times is appended to a dead-letter
///   stream with its fields and the reason, and acknowledged.
/// - **Losses reported**: a pending entry trimmed away before its acknowledgement is reported as
///   ``StreamConsumerEvent/lost(stream:ids:)``, never skipped silently.
/// - **`NOGROUP`**: a deleted stream or group is reported once and created again; consuming resumes when the stream
///   exists again, without a busy loop.
/// - **Stale consumers** (opt in): other consumers idle for ``Options/removeIdleConsumersAfter`` with nothing
///   pending are removed from the group; one with pending entries never is.
///
/// An entry can be delivered twice: when a consumer crashed (or was cut off for longer than `claimIdle`) after
/// processing it and before its acknowledgement reached the server. Make handlers idempotent, keyed by
/// ``StreamMessage/id``.
///
/// A consumer reads on a connection of its own (blocking reads; see ``RedisConnection/sendBlocking(_:)``) and
/// acknowledges, renews and reclaims on another, both with the configuration's endpoint, credentials and TLS.
public final class StreamConsumer: AsyncSequence, Sendable {
    /// Each element is one entry.
    public typealias Element = StreamMessage
    /// The error that ends the sequence.
    public typealias Failure = RedisError

    let core: StreamConsumerCore

    private init(core: StreamConsumerCore) {
        self.core = core
    }

    /// A consumer that goes away closes, in the background.
    deinit {
        core.closeInBackground()
    }

    /// Where a new group starts reading, when the consumer creates it.
    public enum GroupStart: Sendable, Hashable {
        /// Entries appended after the group is created (`$`).
        case newEntries
        /// Every entry in the stream (`0`).
        case beginning
        /// Entries after this ID.
        case after(StreamEntryID)

        var argument: RedisArgument {
            switch self {
            case .newEntries: "$"
            case .beginning: "0"
            case .after(let id): id.redisArgument
            }
        }
    }

    /// How a consumer reads, reclaims and gives up on entries.
    public struct Options: Sendable, Hashable {
        /// The most entries held at once: delivered (or buffered for delivery) and not yet acknowledged. An entry
        /// counts from its read until ``StreamMessage/ack()``, so the next read goes out with the acknowledgement;
        /// a read waits until half the prefetch is free (or nothing is held), so it is not one round trip per entry.
        /// Reads ask for the room left (with several streams, a read may exceed it by at most the number of streams
        /// less one;
        /// a reclaim answered while a blocking read waits, by at most what the reclaim took: twice the prefetch
        /// at worst).
        public var prefetch: Int
        /// Where a group the consumer creates starts (a group that exists is left as it is). A group created again
        /// after `NOGROUP` starts at the stream's first entry whatever this says, so nothing appended after the
        /// stream came back is skipped.
        public var start: GroupStart
        /// Entries pending longer than this (in any consumer of the group) are taken over; this consumer's own are
        /// renewed every third of it. `nil`: no reclaiming and no leases.
        public var claimIdle: Duration?
        /// How often to look for idle entries to reclaim.
        public var claimInterval: Duration
        /// An entry delivered more times than this goes to the dead-letter stream instead; `nil`: never.
        public var maxDeliveries: Int?
        /// The dead-letter stream for every stream; `nil`: `<stream>:dead-letter` for each.
        public var deadLetterStream: RedisName?
        /// How long one read waits for new entries before it asks again (`XREADGROUP ... BLOCK`).
        public var blockTimeout: Duration
        /// Other consumers of the group idle at least this long with nothing pending are removed from it
        /// (`XGROUP DELCONSUMER`), checked about once a minute (and no less often than ``claimInterval``) by a
        /// consumer that reclaims (``claimIdle`` set): names of crashed or retired processes do not pile up in the
        /// group. A consumer with pending entries is never removed (its entries would leave the pending list, and
        /// nothing would deliver them again): once they are reclaimed, it is. `nil` (the default): never.
        ///
        /// "Idle" is the server's: since the consumer's last read on Redis 7.2 and later, but since it was last
        /// *served entries* before 7.2, so there a live consumer of a stream quiet for that long is removed too (it
        /// is created again by its next read; nothing is lost, but the group's list of names flaps). Needs `EVAL`,
        /// `XINFO` and `XGROUP DELCONSUMER`; refused by an ACL, it is reported once and stops. Must be longer than
        /// ``blockTimeout``.
        public var removeIdleConsumersAfter: Duration?
        /// Acknowledges each message when the loop asks for the next one, unless it was acknowledged or failed
        /// already. A message whose loop body throws or breaks is not acknowledged: once let go it counts as failed,
        /// and is delivered again.
        public var acknowledgesAutomatically: Bool

        /// Options; the defaults suit most services.
        public init(
            prefetch: Int = 16,
            start: GroupStart = .newEntries,
            claimIdle: Duration? = .seconds(30),
            claimInterval: Duration = .seconds(5),
            maxDeliveries: Int? = 10,
            deadLetterStream: RedisName? = nil,
            blockTimeout: Duration = .seconds(2),
            removeIdleConsumersAfter: Duration? = nil,
            acknowledgesAutomatically: Bool = false
        ) {
            self.prefetch = prefetch
            self.start = start
            self.claimIdle = claimIdle
            self.claimInterval = claimInterval
            self.maxDeliveries = maxDeliveries
            self.deadLetterStream = deadLetterStream
            self.blockTimeout = blockTimeout
            self.removeIdleConsumersAfter = removeIdleConsumersAfter
            self.acknowledgesAutomatically = acknowledgesAutomatically
        }

        func validate(streams: [RedisName]) throws(RedisError) {
            func invalid(_ text: String) -> RedisError { RedisError(.invalidConfiguration, text) }
            guard !streams.isEmpty else { throw invalid("a StreamConsumer needs at least one stream") }
            guard Set(streams).count == streams.count else { throw invalid("a stream is named twice") }
            guard prefetch > 0 else { throw invalid("prefetch must be at least 1") }
            if let claimIdle, claimIdle < .milliseconds(3) || claimIdle > .seconds(366 * 86_400) {
                throw invalid("claimIdle must be between 3 ms and a year (nil: never)")
            }
            guard claimInterval > .zero else { throw invalid("claimInterval must be positive") }
            if let maxDeliveries, maxDeliveries < 1 { throw invalid("maxDeliveries must be at least 1") }
            if let after = removeIdleConsumersAfter, after <= blockTimeout || after > .seconds(366 * 86_400) {
                throw invalid("removeIdleConsumersAfter must be longer than blockTimeout and at most a year (nil: never)")
            }
            guard blockTimeout >= .milliseconds(1), blockTimeout <= .seconds(86_400) else {
                throw invalid("blockTimeout must be between 1 ms and 24 hours")
            }
            if let deadLetterStream, streams.contains(deadLetterStream) {
                throw invalid("the dead-letter stream cannot be one of the streams consumed")
            }
        }
    }

    /// Connects and joins `group` on each of `streams` as `consumer`, creating the group where it is missing (with
    /// `MKSTREAM`, from ``Options/start``); returns once every group exists. Reading starts at once.
    ///
    /// - Parameters:
    ///   - configuration: the server, credentials and TLS, as for ``RedisConnection/connect(to:logger:)``.
    ///   - streams: the streams' keys; one read covers them all.
    ///   - group: the consumer group.
    ///   - consumer: this consumer's name in the group. Give each process a name of its own that it keeps across
    ///     restarts (a host name, a pod name), so a restarted process takes up what it held.
    ///   - options: prefetch, reclaiming, dead letters; see ``Options``.
    ///   - logger: where the consumer logs claims, dead letters, losses and reconnects; nothing by default.
    /// - Throws: ``RedisError``: as ``RedisConnection/connect(to:logger:)``; ``RedisError/Code/serverError`` when a
    ///   key holds something else than a stream (`WRONGTYPE`); ``RedisError/Code/permissionDenied`` for an ACL that
    ///   forbids the stream commands; ``RedisError/Code/invalidConfiguration`` for invalid options.
    public static func connect(
        to configuration: RedisConfiguration,
        streams: [RedisName],
        group: RedisName,
        consumer: RedisName,
        options: Options = Options(),
        logger: Logger = RedisConnection.disabledLogger
    ) async throws(RedisError) -> StreamConsumer {
        try options.validate(streams: streams)
        let connection = try await RedisConnection.connect(to: configuration, logger: logger)
        let core = StreamConsumerCore(
            connection: connection, streams: streams, group: group, consumer: consumer, options: options, logger: logger)
        do {
            try await core.start()
        } catch {
            await connection.close()
            throw error
        }
        return StreamConsumer(core: core)
    }

    /// The consumer's changes and failure cases, from now on; see ``StreamConsumerEvent``. Each call returns a new
    /// sequence; it ends when the consumer is closed.
    public func events() -> AsyncStream<StreamConsumerEvent> { core.events.stream() }

    /// The event-loop thread as a task executor; see ``RedisConnection/taskExecutor``.
    public var taskExecutor: any TaskExecutor { core.connection.taskExecutor }

    /// Entries held right now: delivered or buffered, and not yet acknowledged with ``StreamMessage/ack()`` (at most
    /// about ``Options/prefetch``).
    public var heldCount: Int { core.heldCount }

    /// Closes gracefully: stops reading, reclaiming and renewing, waits for the acknowledgements already made to be
    /// confirmed, releases every entry still held (buffered ones and ones a handler is working on: their idle time
    /// is set to ``Options/claimIdle``, so another consumer takes them over at its next reclaim), ends the loop
    /// normally and closes the connections. Acknowledgements made after it are not sent. Calling it again waits
    /// for the first call.
    public func close() async {
        await core.close()
    }

    /// The iterator. One task iterates at a time; a second concurrent reader fails with
    /// ``RedisError/Code/invalidArgument``.
    public func makeAsyncIterator() -> Iterator {
        Iterator(consumer: self)
    }

    /// Returns the entries in the order the reads returned them (per stream, in ID order).
    public struct Iterator: AsyncIteratorProtocol {
        private let consumer: StreamConsumer
        private var previous: StreamSettlement?

        init(consumer: StreamConsumer) {
            self.consumer = consumer
        }

        /// The next entry; `nil` once the consumer is closed, or when the task is cancelled (which closes it).
        ///
        /// - Throws: ``RedisError/Code/invalidArgument`` when another task is iterating.
        public mutating func next() async throws(RedisError) -> StreamMessage? {
            try await next(isolation: nil)
        }

        /// The next entry, staying on the caller's actor; see ``next()``.
        public mutating func next(isolation actor: isolated (any Actor)? = #isolation) async throws(RedisError) -> StreamMessage? {
            let core = consumer.core
            if core.options.acknowledgesAutomatically, let previous, !previous.isSettled {
                previous.settle(acknowledging: true)
            }
            previous = nil
            let message = try await core.queue.next(isolation: actor) { core.closeInBackground() }
            previous = message?.settlement
            return message
        }
    }
}

@available(*, unavailable, message: "an iterator belongs to the task that iterates")
extension StreamConsumer.Iterator: Sendable {}
