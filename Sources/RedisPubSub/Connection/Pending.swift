/// A one-shot result that an async caller awaits, fulfilled from the event loop or failed by cancellation,
/// whichever comes first; the other is ignored. Cancellation that arrives before the caller suspends still wins.
///
/// The state sits behind a pthread mutex (``Locked``) rather than atomics: Swift may place these objects in a task's
/// allocator, whose memory is reused without malloc/free, and only a lock at the same address gives
/// ThreadSanitizer the ordering it needs across such reuse. The continuation is unsafe (unchecked) because the
/// state machine already guarantees it is resumed exactly once.
final class Pending<Value: Sendable>: Sendable {
    private enum State {
        case initial
        case waiting(UnsafeContinuation<Result<Value, RedisError>, Never>)
        case finished
    }

    private let state = Locked(State.initial)

    /// Whether the result is already decided (for a request not yet written: then it needs no writing).
    var isFinished: Bool {
        state.withLock { if case .finished = $0 { true } else { false } }
    }

    /// Suspends until ``succeed(_:)``, ``fail(_:)`` or task cancellation. `start` runs once the continuation is
    /// installed, unless the task was cancelled already.
    func wait(start: () -> Void) async throws(RedisError) -> Value {
        let result = await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Result<Value, RedisError>, Never>) in
                let installed = state.withLock { state -> Bool in
                    guard case .initial = state else { return false }
                    state = .waiting(continuation)
                    return true
                }
                if installed {
                    start()
                } else {
                    // Only cancellation can finish a wait before it starts.
                    continuation.resume(returning: .failure(.cancelled))
                }
            }
        } onCancel: {
            fail(.cancelled)
        }
        return try result.get()
    }

    /// Delivers `value`; returns `false` when the result was decided already (the waiter was cancelled, say).
    @discardableResult
    func succeed(_ value: Value) -> Bool { resume(.success(value)) }

    func fail(_ error: RedisError) { resume(.failure(error)) }

    @discardableResult
    private func resume(_ result: Result<Value, RedisError>) -> Bool {
        let continuation = state.withLock { state -> UnsafeContinuation<Result<Value, RedisError>, Never>? in
            switch state {
            case .initial:
                state = .finished  // the waiter has not suspended yet; it will see `finished`
                return nil
            case .waiting(let continuation):
                state = .finished
                return continuation
            case .finished:
                return nil
            }
        }
        continuation?.resume(returning: result)
        return continuation != nil
    }
}
