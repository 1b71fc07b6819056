import DequeModule
import Synchronization

/// The messages of one `subscribe` call, in the order the server sent them.
///
/// Iterate it once, with `for try await`: a subscription has one consumer, and a second iterator ends at once.
/// The loop ends normally after ``Subscriber/close()``, and throws a ``RedisError`` when the connection closes for good
/// (a lost connection is re-established and resubscribed; see ``events``) or the server refuses or drops the
/// subscription. Leaving the loop, cancelling its task or releasing the subscription unsubscribes (when no other
/// subscription needs the channel).
public struct Subscription: AsyncSequence, Sendable {
    /// Each element is one message.
    public typealias Element = Message

    let handle: SubscriptionHandle

    /// How many messages the buffering policy has dropped so far because the consumer fell behind.
    public var droppedMessageCount: Int { handle.sink.droppedCount }

    /// This subscription's gaps, from now on: ``SubscriptionEvent/disconnected(at:cause:)`` when the connection is
    /// lost, ``SubscriptionEvent/resubscribed(at:gap:)`` when every channel is confirmed again after the reconnect.
    /// Each access returns a new sequence (keeping its newest 256 events); it ends when the subscription ends: on
    /// ``cancel()``, when its loop is left, or when it is released.
    ///
    /// ```swift
    /// let events = subscription.events   // outside the task, which then does not keep the subscription alive
    /// Task { for await event in events { logger.warning("orders: \(event)") } }
    /// ```
    public var events: AsyncStream<SubscriptionEvent> { handle.sink.events.stream() }

    /// Ends the subscription now: the loop ends (after nothing more), and the channels are unsubscribed when no other
    /// subscription needs them.
    public func cancel() {
        handle.end()
    }

    /// The iterator; the subscription ends when it is released.
    public func makeAsyncIterator() -> Iterator {
        Iterator(handle: handle)
    }

    /// Reads messages in batches: one lock per batch, no suspension while messages are buffered.
    public struct Iterator: AsyncIteratorProtocol {
        private let handle: SubscriptionHandle
        /// Only the first iterator reads (and ends the subscription when released); later ones are empty.
        private let token: IteratorToken?
        private var batch = Deque<Message>()

        init(handle: SubscriptionHandle) {
            self.handle = handle
            self.token = handle.claimIterator() ? IteratorToken(handle: handle) : nil
        }

        /// The next message; `nil` when the subscription ended normally or the task was cancelled.
        ///
        /// - Throws: ``RedisError`` when the connection closed for good or the server refused or dropped the subscription.
        public mutating func next() async throws -> Message? {
            try await next(isolation: nil)
        }

        /// The next message, staying on the caller's actor; see ``next()``.
        public mutating func next(isolation actor: isolated (any Actor)? = #isolation) async throws -> Message? {
            guard token != nil else { return nil }
            if let message = batch.popFirst() { return message }
            while true {
                switch handle.sink.take(into: &batch) {
                case .messages:
                    return batch.popFirst()
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

/// Ends the subscription when the iterator goes away (the `for` loop exited).
final class IteratorToken: Sendable {
    let handle: SubscriptionHandle
    init(handle: SubscriptionHandle) { self.handle = handle }
    deinit { handle.end() }
}

/// One subscription's registration; ends it (once) when told to or when released.
final class SubscriptionHandle: Sendable {
    let sink: SubscriptionSink
    let lifetime: SubscriberLifetime
    private let ended = Atomic(false)
    private let iterated = Atomic(false)

    init(sink: SubscriptionSink, lifetime: SubscriberLifetime) {
        self.sink = sink
        self.lifetime = lifetime
    }

    deinit { end() }

    /// Whether the caller is the first to iterate.
    func claimIterator() -> Bool {
        !iterated.exchange(true, ordering: .acquiringAndReleasing)
    }

    /// Stops delivery and unsubscribes on the loop. Idempotent.
    func end() {
        guard !ended.exchange(true, ordering: .acquiringAndReleasing) else { return }
        sink.consumerStopped()
        let sink = self.sink
        lifetime.core.execute { $0.remove(sink) }
    }
}

