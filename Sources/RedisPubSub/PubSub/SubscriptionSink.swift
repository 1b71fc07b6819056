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
        /// What the subscription holds (asked for, confirmed or not), in the order it was asked for.
        var keys: [ChannelKey]
        /// Every key is confirmed by the server, and the subscription has not ended.
        var subscribed = false
        /// Whether an iterator reads right now (one at a time).
        var iterating = false
        /// Bumped by every wait, so a late timeout cannot end a later wait.
        var waitGeneration: UInt64 = 0
    }

    let policy: BufferingPolicy
    /// Fulfilled when the server acknowledged every key.
    let ready = Pending<Void>()
    /// Gaps in this subscription: disconnected, resubscribed.
    let events = EventBroadcaster<SubscriptionEvent>()
    private let state: Locked<State>

    init(keys: [ChannelKey], policy: BufferingPolicy) {
        var unique = Set<ChannelKey>()
        self.state = Locked(State(keys: keys.filter { unique.insert($0).inserted }))
        self.policy = policy
    }

    var droppedCount: Int { state.withLock { $0.dropped } }

    /// What the subscription holds now.
    var keys: [ChannelKey] { state.withLock { $0.keys } }

    /// Whether every key is confirmed and the subscription goes on.
    var isSubscribed: Bool { state.withLock { $0.subscribed && $0.end == nil && !$0.consumerGone } }

    /// Whether the subscription has ended (cancelled, released, failed or closed).
    var hasEnded: Bool { state.withLock { $0.end != nil || $0.consumerGone } }

    /// Adds `keys` to what the subscription holds; returns those it did not hold yet.
    func insertKeys(_ keys: [ChannelKey]) -> [ChannelKey] {
        state.withLock { state in
            var held = Set(state.keys)
            let new = keys.filter { held.insert($0).inserted }
            state.keys += new
            return new
        }
    }

    /// Removes `keys` from what the subscription holds; returns those it held.
    func removeKeys(_ keys: [ChannelKey]) -> [ChannelKey] {
        state.withLock { state in
            let removing = Set(keys)
            let held = state.keys.filter { removing.contains($0) }
            state.keys.removeAll { removing.contains($0) }
            return held
        }
    }

    /// Every key confirmed (`true`), or the connection lost (`false`).
    func setSubscribed(_ subscribed: Bool) {
        state.withLock { $0.subscribed = subscribed }
    }

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
            state.subscribed = false
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

    enum TakeOne {
        case message(Message)
        case end(End)
        case empty
    }

    /// The oldest buffered message (a read of one message at a time: ``Subscription/nextMessage(timeout:)``).
    func takeOne() -> TakeOne {
        state.withLock { state in
            if let message = state.buffer.popFirst() { return .message(message) }
            if state.consumerGone { return .end(.finished) }
            if let end = state.end { return .end(end) }
            return .empty
        }
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

    /// Claims the right to read: one iterator at a time. Returns `false` when another one reads.
    func claimReading() -> Bool {
        state.withLock { state in
            if state.iterating { return false }
            state.iterating = true
            return true
        }
    }

    /// An iterator stopped reading: the messages it had taken and not returned go back to the front of the buffer,
    /// for the next one (unless the subscription ended meanwhile).
    func releaseReading(returning unread: Deque<Message>) {
        state.withLock { state in
            state.iterating = false
            guard !unread.isEmpty, !state.consumerGone else { return }
            if state.buffer.isEmpty {
                state.buffer = unread
            } else {
                state.buffer.insert(contentsOf: unread, at: 0)
            }
            // Together they may exceed the policy's bound: drop as it would have.
            switch policy.base {
            case .unbounded: break
            case .newest(let limit):
                let excess = state.buffer.count - limit
                if excess > 0 {
                    state.buffer.removeFirst(excess)
                    state.dropped += excess
                }
            case .oldest(let limit):
                let excess = state.buffer.count - limit
                if excess > 0 {
                    state.buffer.removeLast(excess)
                    state.dropped += excess
                }
            }
        }
    }

    /// Suspends until something is buffered, the subscription ends, the task is cancelled (which ends the
    /// subscription), or `deadline` passes.
    func waitForMessages(isolation actor: isolated (any Actor)?, until deadline: ContinuousClock.Instant? = nil) async {
        var timer: Task<Void, Never>?
        defer { timer?.cancel() }  // woken early: the timer task ends now, not at the deadline
        await withTaskCancellationHandler {
            await withUnsafeContinuation(isolation: actor) { (continuation: UnsafeContinuation<Void, Never>) in
                let generation = state.withLock { state -> UInt64? in
                    if !state.buffer.isEmpty || state.end != nil || state.consumerGone { return nil }
                    state.consumer = continuation
                    state.waitGeneration &+= 1
                    return state.waitGeneration
                }
                guard let generation else {
                    continuation.resume()
                    return
                }
                guard let deadline else { return }
                // Rare (a timed read that found nothing buffered): a task that sleeps, then ends this wait only.
                timer = Task { [self] in
                    guard (try? await Task.sleep(until: deadline)) != nil else { return }
                    let consumer = state.withLock { state -> UnsafeContinuation<Void, Never>? in
                        guard state.waitGeneration == generation else { return nil }
                        return state.consumer.take()
                    }
                    consumer?.resume()
                }
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
            state.subscribed = false
            state.buffer.removeAll()
            return state.consumer.take()
        }
        consumer?.resume()
        events.finish()
    }
}
