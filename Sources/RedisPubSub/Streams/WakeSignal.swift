/// Wakes one waiting task; a signal sent while none waits is kept for the next wait. Cancelling the waiting task
/// wakes it.
final class WakeSignal: Sendable {
    private struct State {
        var signalled = false
        var waiter: UnsafeContinuation<Void, Never>?
    }
    private let state = Locked(State())

    func signal() {
        let waiter = state.withLock { state -> UnsafeContinuation<Void, Never>? in
            guard let waiter = state.waiter else {
                state.signalled = true
                return nil
            }
            state.waiter = nil
            return waiter
        }
        waiter?.resume()
    }

    func wait() async {
        await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
                let now = state.withLock { state -> Bool in
                    if state.signalled || Task.isCancelled {
                        state.signalled = false
                        return true
                    }
                    state.waiter = continuation
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            signal()
        }
    }
}
