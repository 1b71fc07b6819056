import DequeModule
import Synchronization

/// The messages of one `subscribe` call, in the order the server sent them, and what the subscription holds.
///
/// Read it with `for try await`, one reader at a time: a second iterator while one is reading throws
/// ``RedisError/Code/invalidArgument`` from `next()` (subscribe again for a second, independent consumer). An
/// iterator that stops early (`break`, `first(where:)`) keeps the subscription and the messages it had not returned:
/// the next iterator goes on from there, and ``nextMessage(timeout:isolation:)`` reads one message without a loop.
///
/// The loop ends normally after ``cancel()``, ``unsubscribe()`` or ``Subscriber/close()``, and throws a
/// ``RedisError`` when the connection closes for good (a lost connection is re-established and resubscribed; see
/// ``events()``) or the server refuses or drops the subscription. The subscription ends, and unsubscribes what no
/// other subscription needs, on ``cancel()`` or ``unsubscribe()``, when the task reading it is cancelled, or when the
/// last copy of it is released: `for try await message in try await subscriber.subscribe(to: "a") { ... }` ends it
/// when the loop is left. ``Subscriber/subscribe(to:bufferingPolicy:isolation:_:)`` ends it when its closure returns.
public struct Subscription: AsyncSequence, Sendable {
    /// Each element is one message.
    public typealias Element = Message
    /// Every error is a ``RedisError``.
    public typealias Failure = RedisError

    let handle: SubscriptionHandle

    /// How many messages the buffering policy has dropped so far because the consumer fell behind.
    public var droppedMessageCount: Int { handle.sink.droppedCount }

    /// The channels this subscription holds now (confirmed or being confirmed), in the order they were added.
    public var channels: [RedisName] { names(.channel) }
    /// The glob patterns this subscription holds now.
    public var patterns: [RedisName] { names(.pattern) }
    /// The sharded channels this subscription holds now.
    public var shardChannels: [RedisName] { names(.shardChannel) }

    /// Whether the server confirmed every channel and pattern and the subscription goes on: `false` while the
    /// connection is down (between ``SubscriptionEvent/disconnected(at:cause:)`` and
    /// ``SubscriptionEvent/resubscribed(at:gap:)``), while an addition is not yet confirmed, and once it has ended.
    public var isSubscribed: Bool { handle.sink.isSubscribed }

    /// Whether the subscription has ended: cancelled, unsubscribed, released, failed, or its subscriber closed. After a
    /// failure or ``Subscriber/close()`` its reader still gets the messages buffered, then the end; after the others
    /// the buffer is dropped.
    public var hasEnded: Bool { handle.sink.hasEnded }

    private func names(_ kind: SubscriptionKind) -> [RedisName] {
        handle.sink.keys.filter { $0.kind == kind }.map { RedisName(bytes: $0.name) }
    }

    /// This subscription's state and gaps: first where it stands now (``SubscriptionEvent/subscribed(at:)``, or the
    /// last ``SubscriptionEvent/disconnected(at:cause:)`` or ``SubscriptionEvent/resubscribed(at:gap:)``), then every
    /// change. Each call returns a new sequence (keeping its newest 256 events); it ends when the subscription ends.
    ///
    /// ```swift
    /// let events = subscription.events()   // outside the task, which then does not keep the subscription alive
    /// Task { for await event in events { logger.warning("orders: \(event)") } }
    /// ```
    public func events() -> AsyncStream<SubscriptionEvent> { handle.sink.events.stream() }

    /// Adds channels, patterns and sharded channels to this subscription, and returns once the server confirmed
    /// every one of them: messages published after that are received. Names it holds already are not subscribed
    /// again (the call still waits for them if they are not confirmed yet).
    ///
    /// While the connection is down, the call waits for the reconnect, up to ``RedisConfiguration/connectTimeout``.
    /// A call that fails or is cancelled leaves the subscription holding what it held before (names it added are
    /// taken out again once the server has answered).
    ///
    /// - Throws: ``RedisError``: ``RedisError/Code/permissionDenied`` when an ACL forbids a name (then none of
    ///   these names is added, and the subscription keeps what it had), ``RedisError/Code/connectionClosed``,
    ///   ``RedisError/Code/invalidArgument`` when the subscription has ended, ``RedisError/Code/cancelled``.
    ///   Messages that arrived through a name before its addition failed stay in the buffer.
    public func add(
        channels: [any RedisNameConvertible] = [],
        patterns: [any RedisNameConvertible] = [],
        shardChannels: [any RedisNameConvertible] = []
    ) async throws(RedisError) {
        let keys = ChannelKey.keys(channels: channels, patterns: patterns, shardChannels: shardChannels)
        guard !keys.isEmpty else { return }
        let sink = handle.sink
        let pending = Pending<Void>()
        try await pending.wait { handle.owner.addKeys(keys, to: sink, pending) }
    }

    /// Removes channels, patterns and sharded channels from this subscription: nothing more is buffered from them
    /// (what is buffered already is still read). Returns once the server acknowledged the unsubscribes this needed
    /// (none when another subscription of the same ``Subscriber`` still holds a name), or at once when the connection
    /// is down.
    public func remove(
        channels: [any RedisNameConvertible] = [],
        patterns: [any RedisNameConvertible] = [],
        shardChannels: [any RedisNameConvertible] = []
    ) async {
        let keys = ChannelKey.keys(channels: channels, patterns: patterns, shardChannels: shardChannels)
        guard !keys.isEmpty else { return }
        let sink = handle.sink
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            handle.owner.removeKeys(keys, from: sink) { continuation.resume() }
        }
    }

    /// The next message, waiting at most `timeout`; `nil` when none arrived in time or the subscription has ended
    /// (``hasEnded`` tells which). A timeout keeps the subscription; cancelling the calling task ends it, as for the
    /// iterator.
    ///
    /// ```swift
    /// while let message = try await subscription.nextMessage(timeout: .seconds(5)) { ... }
    /// ```
    ///
    /// - Throws: as the iterator's `next()`.
    public func nextMessage(
        timeout: Duration,
        isolation actor: isolated (any Actor)? = #isolation
    ) async throws(RedisError) -> Message? {
        let sink = handle.sink
        guard sink.claimReading() else { throw Self.anotherReader }
        defer { sink.releaseReading(returning: []) }
        let deadline = ContinuousClock.now + timeout
        while true {
            switch sink.takeOne() {
            case .message(let message):
                return message
            case .end(.finished):
                handle.end()
                return nil
            case .end(.failed(let error)):
                handle.end()
                throw error
            case .empty:
                if Task.isCancelled {
                    handle.end()
                    return nil
                }
                if ContinuousClock.now >= deadline { return nil }
                await sink.waitForMessages(isolation: actor, until: deadline)
            }
        }
    }

    static let anotherReader = RedisError(
        .invalidArgument,
        "another iterator is reading this subscription: it has one reader at a time (subscribe again for a second "
            + "consumer)")

    /// Ends the subscription now: the loop ends (after nothing more), and the channels are unsubscribed when no other
    /// subscription needs them. Returns at once; ``unsubscribe()`` waits for the server.
    public func cancel() {
        handle.end()
    }

    /// Ends the subscription as ``cancel()`` does, and returns once the server acknowledged the unsubscribes (at
    /// once when the connection is down): from then on, `PUBLISH` no longer counts this subscription. While
    /// ``Subscriber/close()`` runs, it returns at once (the close unsubscribes everything itself).
    public func unsubscribe() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            handle.end { continuation.resume() }
        }
    }

    /// The iterator. Releasing it keeps the subscription.
    public func makeAsyncIterator() -> Iterator {
        Iterator(handle: handle)
    }

    /// Reads messages in batches: one lock per batch, no suspension while messages are buffered.
    public struct Iterator: AsyncIteratorProtocol {
        private let handle: SubscriptionHandle
        /// The right to read and the batch taken from the buffer, claimed by the first `next()`.
        private var reader: Reader?

        init(handle: SubscriptionHandle) {
            self.handle = handle
        }

        /// The next message; `nil` when the subscription ended normally or the task was cancelled (which ends it).
        ///
        /// - Throws: ``RedisError`` when the connection closed for good or the server refused or dropped the
        ///   subscription, and ``RedisError/Code/invalidArgument`` when another iterator is reading.
        public mutating func next() async throws(RedisError) -> Message? {
            try await next(isolation: nil)
        }

        /// The next message, staying on the caller's actor; see ``next()``.
        public mutating func next(isolation actor: isolated (any Actor)? = #isolation) async throws(RedisError) -> Message? {
            if reader == nil {
                guard handle.sink.claimReading() else { throw Subscription.anotherReader }
                reader = Reader(sink: handle.sink)
            }
            let reader = self.reader!
            if let message = reader.batch.popFirst() { return message }
            while true {
                switch handle.sink.take(into: &reader.batch) {
                case .messages:
                    return reader.batch.popFirst()
                case .end(.finished):
                    handle.end()
                    return nil
                case .end(.failed(let error)):
                    handle.end()
                    throw error
                case .empty:
                    if Task.isCancelled {
                        handle.end()
                        return nil
                    }
                    await handle.sink.waitForMessages(isolation: actor)
                }
            }
        }
    }
}

@available(*, unavailable, message: "an iterator belongs to the task that iterates")
extension Subscription.Iterator: Sendable {}

/// An iterator's right to read, and the messages it took from the buffer: when the iterator goes away, the right
/// passes on and the messages it had not returned go back to the front of the buffer.
final class Reader {
    let sink: SubscriptionSink
    var batch = Deque<Message>()
    init(sink: SubscriptionSink) { self.sink = sink }
    deinit { sink.releaseReading(returning: batch) }
}

extension ChannelKey {
    /// The keys of a channels/patterns/sharded channels triple, in that order.
    static func keys(
        channels: [any RedisNameConvertible],
        patterns: [any RedisNameConvertible],
        shardChannels: [any RedisNameConvertible]
    ) -> [ChannelKey] {
        channels.map { ChannelKey(kind: .channel, name: $0.redisArgument.bytes) }
            + patterns.map { ChannelKey(kind: .pattern, name: $0.redisArgument.bytes) }
            + shardChannels.map { ChannelKey(kind: .shardChannel, name: $0.redisArgument.bytes) }
    }
}

/// One subscription's registration; ends it (once) when told to or when released.
final class SubscriptionHandle: Sendable {
    private enum State {
        case live
        /// Unsubscribing: these run once the loop has done it.
        case ending([@Sendable () -> Void])
        case ended
    }

    let sink: SubscriptionSink
    /// The subscriber it belongs to; held, so the subscriber's connections stay open while the subscription exists.
    let owner: any SubscriptionOwner
    private let state = Locked(State.live)

    init(sink: SubscriptionSink, owner: any SubscriptionOwner) {
        self.sink = sink
        self.owner = owner
    }

    deinit { end() }

    /// Stops delivery and unsubscribes on the loop; `completion` runs once the server acknowledged the unsubscribes
    /// (also when another caller started the ending). Idempotent.
    func end(completion: (@Sendable () -> Void)? = nil) {
        let first = state.withLock { state -> Bool? in
            switch state {
            case .live:
                state = .ending(completion.map { [$0] } ?? [])
                return true
            case .ending(let waiting):
                if let completion { state = .ending(waiting + [completion]) }
                return false
            case .ended:
                return nil
            }
        }
        guard let first else {
            completion?()
            return
        }
        guard first else { return }
        sink.consumerStopped()
        let sink = self.sink
        let state = self.state  // not `self`: this may run from `deinit`
        owner.remove(sink) {
            let waiting = state.withLock { state -> [@Sendable () -> Void] in
                defer { state = .ended }
                if case .ending(let waiting) = state { return waiting }
                return []
            }
            for completion in waiting { completion() }
        }
    }
}
