import Synchronization

/// A one-shot result that an async caller awaits, fulfilled from the event loop or failed by cancellation,
/// whichever comes first; the other is ignored. Cancellation that arrives before the caller suspends still wins.
///
/// Lock-free: an atomic state (initial → waiting → finished) decides who resumes; one allocation per request. The
/// continuation is unsafe (unchecked) because that state already guarantees it is resumed exactly once.
final class Pending<Value: Sendable>: Sendable {
    private static var initial: UInt8 { 0 }
    private static var waiting: UInt8 { 1 }
    private static var finished: UInt8 { 2 }

    private let state = Atomic<UInt8>(0)
    // nonisolated(unsafe) because: written only by the waiter before it publishes `waiting` (release), and read and
    // cleared only by the single party whose compare-exchange moves `waiting` to `finished` (acquire).
    private nonisolated(unsafe) var continuation: UnsafeContinuation<Value, any Error>?
    /// The command's RESP bytes, for requests; empty for other waits.
    let bytes: [UInt8]

    init(bytes: [UInt8] = []) {
        self.bytes = bytes
    }

    /// Whether the result is already decided (for a request not yet written: then it needs no writing).
    var isFinished: Bool { state.load(ordering: .acquiring) == Self.finished }

    /// Suspends until ``succeed(_:)``, ``fail(_:)`` or task cancellation. `start` runs once the continuation is
    /// installed, unless the task was cancelled already.
    func wait(start: () -> Void) async throws -> Value {
        try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Value, any Error>) in
                self.continuation = continuation
                let installed = state.compareExchange(
                    expected: Self.initial, desired: Self.waiting, ordering: .acquiringAndReleasing
                ).exchanged
                if installed {
                    start()
                } else {
                    // Only cancellation can finish a wait before it starts.
                    self.continuation = nil
                    continuation.resume(throwing: CancellationError())
                }
            }
        } onCancel: {
            fail(CancellationError())
        }
    }

    func succeed(_ value: Value) { resume(.success(value)) }

    func fail(_ error: any Error) { resume(.failure(error)) }

    private func resume(_ result: Result<Value, any Error>) {
        let early = state.compareExchange(expected: Self.initial, desired: Self.finished, ordering: .acquiringAndReleasing)
        if early.exchanged { return }  // the waiter has not installed its continuation; it will see `finished`
        guard early.original == Self.waiting,
              state.compareExchange(expected: Self.waiting, desired: Self.finished, ordering: .acquiringAndReleasing).exchanged
        else { return }  // someone else finished it
        let continuation = self.continuation
        self.continuation = nil
        continuation?.resume(with: result)
    }
}
