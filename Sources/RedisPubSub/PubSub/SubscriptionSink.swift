import DequeModule

/// The hand-off between the event loop and one subscription's consumer.
///
/// The loop appends under a short lock and wakes a waiting consumer once per socket read, not per message; the
/// consumer takes everything buffered in one swap and then iterates its own batch without locking or suspending.
final class SubscriptionSink: Sendable {
    enum End: Sendable {
        case finished
        case failed(RedisError)
    }

    private struct State {
        var buffer = Deque<Message>()
        var consumer: UnsafeContinuation<Void, Never>?
        var wakeScheduled = false
        var end: End?
        /// The consumer stopped (cancelled or gone): nothing more is buffered.
        var consumerGone = false
        var dropped = 0
    }

    /// What the subscription listens to.
    let keys: [ChannelKey]
    let policy: BufferingPolicy
    /// Fulfilled when the server acknowledged every key.
    let ready = Pending<Void>()
    /// Gaps in this subscription: disconnected, resubscribed.
    let events = EventBroadcaster<SubscriptionEvent>()
    private let state = Locked(State())

    init(keys: [ChannelKey], policy: BufferingPolicy) {
        self.keys = keys
        self.policy = policy
    }

    var droppedCount: Int { state.withLock { $0.dropped } }

    // MARK: Loop side

    /// Buffers `message` per the policy. Returns `true` when the consumer waits and must be woken (once per batch).
    func append(_ message: Message) -> Bool {
        state.withLock { state in
            guard state.end == nil, !state.consumerGone else { return false }
            switch policy.base {
            case .unbounded:
                state.buffer.append(message)
            case .newest(let limit):
                if state.buffer.count >= limit {
                    state.buffer.removeFirst()
                    state.dropped += 1
                }
                state.buffer.append(message)
            case .oldest(let limit):
                guard state.buffer.count < limit else {
                    state.dropped += 1
                    return false
                }
                state.buffer.append(message)
            }
            guard state.consumer != nil, !state.wakeScheduled else { return false }
            state.wakeScheduled = true
            return true
        }
    }

    /// Wakes the consumer if it waits.
    func wake() {
        let consumer = state.withLock { state in
            state.wakeScheduled = false
            return state.consumer.take()
        }
        consumer?.resume()
    }

    /// Ends the subscription: the consumer gets what is buffered, then the end (`nil` from `next()`, or the error).
    func finish(_ end: End) {
        let consumer = state.withLock { state -> UnsafeContinuation<Void, Never>? in
            if state.end == nil { state.end = end }
            return state.consumer.take()
        }
        consumer?.resume()
        events.finish()
    }

    // MARK: Consumer side

    enum Take {
        case messages
        case end(End)
        case empty
    }

    /// Moves every buffered message into `batch` (which must be empty) in O(1).
    func take(into batch: inout Deque<Message>) -> Take {
        state.withLock { state in
            if !state.buffer.isEmpty {
                swap(&batch, &state.buffer)
                return .messages
            }
            if state.consumerGone { return .end(.finished) }
            if let end = state.end { return .end(end) }
            return .empty
        }
    }

    /// Suspends until something is buffered, the subscription ends, or the task is cancelled.
    func waitForMessages(isolation actor: isolated (any Actor)?) async {
        await withTaskCancellationHandler {
            await withUnsafeContinuation(isolation: actor) { (continuation: UnsafeContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    if !state.buffer.isEmpty || state.end != nil || state.consumerGone { return true }
                    state.consumer = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            consumerStopped()
        }
    }

    /// The consumer will not read again: drop what is buffered, refuse more, and end the event streams (the
    /// subscription ends here: cancelled, its loop left, or released).
    func consumerStopped() {
        let consumer = state.withLock { state in
            state.consumerGone = true
            state.buffer.removeAll()
            return state.consumer.take()
        }
        consumer?.resume()
        events.finish()
    }
}
