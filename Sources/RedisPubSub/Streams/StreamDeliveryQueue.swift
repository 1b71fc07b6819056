import DequeModule

/// The entries a ``StreamConsumer`` or a ``StreamReader`` read and has not yet handed out, and the one reader
/// waiting for them. Bounded by the owner's prefetch or buffer size (it reads only what there is room for), so it
/// needs no buffering policy.
final class StreamDeliveryQueue<Element: Sendable>: Sendable {
    private struct State {
        var buffer: Deque<Element> = []
        var waiter: UnsafeContinuation<Result<Element?, RedisError>, Never>?
        var reading = false
        /// Set once: `nil` inside for a normal end.
        var end: RedisError?? = nil
    }

    private let state = Locked(State())
    /// The owner's type, for the error a second concurrent reader gets.
    private let owner: String

    init(owner: String) {
        self.owner = owner
    }

    /// Hands `messages` to the reader, in order. Ignored after ``finish(_:)``.
    func push(_ messages: [Element]) {
        guard !messages.isEmpty else { return }
        let resume = state.withLock { state -> (UnsafeContinuation<Result<Element?, RedisError>, Never>, Element)? in
            guard state.end == nil else { return nil }
            state.buffer.append(contentsOf: messages)
            guard let waiter = state.waiter else { return nil }
            state.waiter = nil
            return (waiter, state.buffer.removeFirst())
        }
        if let (waiter, message) = resume { waiter.resume(returning: .success(message)) }
    }

    /// Ends the queue: the reader gets what is buffered, then `nil` (or `error`). Returns nothing; see ``drain()``.
    func finish(_ error: RedisError?) {
        let waiter = state.withLock { state -> UnsafeContinuation<Result<Element?, RedisError>, Never>? in
            if state.end == nil { state.end = .some(error) }
            defer { state.waiter = nil }
            return state.buffer.isEmpty ? state.waiter : nil
        }
        guard let waiter else { return }
        waiter.resume(returning: error.map { .failure($0) } ?? .success(nil))
    }

    /// Removes and returns what was not handed out yet (on close: these are released, not delivered).
    func drain() -> [Element] {
        state.withLock { state in
            defer { state.buffer = [] }
            return Array(state.buffer)
        }
    }

    /// The next message; `nil` once the queue has ended and is empty. One reader at a time: a second concurrent
    /// call throws ``RedisError/Code/invalidArgument``. A cancelled calling task gets `nil` (`onCancel` runs first,
    /// so the owner can end the consumer), whether or not messages are buffered.
    func next(
        isolation actor: isolated (any Actor)?, onCancel: @escaping @Sendable () -> Void
    ) async throws(RedisError) -> Element? {
        // A cancelled loop ends, even with elements buffered (they stay for the owner to release).
        if Task.isCancelled {
            onCancel()
            return nil
        }
        let taken = try state.withLock { state throws(RedisError) -> Result<Element?, RedisError>? in
            guard !state.reading else {
                throw RedisError(.invalidArgument, "a \(owner) has one reader at a time; another task is iterating it")
            }
            if !state.buffer.isEmpty { return .success(state.buffer.removeFirst()) }
            if let end = state.end { return end.map { .failure($0) } ?? .success(nil) }
            state.reading = true
            return nil
        }
        if let taken { return try taken.get() }
        let result: Result<Element?, RedisError> = await withTaskCancellationHandler {
            await withUnsafeContinuation(isolation: actor) { (continuation: UnsafeContinuation<Result<Element?, RedisError>, Never>) in
                let resumeNow = state.withLock { state -> Result<Element?, RedisError>? in
                    if !state.buffer.isEmpty { return .success(state.buffer.removeFirst()) }
                    if let end = state.end { return end.map { .failure($0) } ?? .success(nil) }
                    if Task.isCancelled { return .success(nil) }
                    state.waiter = continuation
                    return nil
                }
                if let resumeNow { continuation.resume(returning: resumeNow) }
            }
        } onCancel: {
            onCancel()
            let waiter = state.withLock { state -> UnsafeContinuation<Result<Element?, RedisError>, Never>? in
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume(returning: .success(nil))
        }
        state.withLock { $0.reading = false }
        return try result.get()
    }
}
