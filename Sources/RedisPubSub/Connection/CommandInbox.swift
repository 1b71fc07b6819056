/// Where callers on any thread leave commands for the event loop, and the connection's bound on outstanding work.
///
/// A command is outstanding from the moment it is admitted until its reply arrives or it fails: queued here, in
/// hiredis's output buffer, or written and unanswered. When the server stops answering, or answers slower than the
/// callers send, that work is bounded by ``RedisConfiguration/maximumPendingCommands`` and
/// ``RedisConfiguration/maximumPendingBytes``: past either, a call fails at once with
/// ``RedisError/Code/overloaded`` instead of growing memory. A call larger than the bound by itself is admitted when
/// nothing else is outstanding, so no single command is impossible to send.
final class CommandInbox: Sendable {
    struct Limits: Hashable, Sendable {
        var commands: Int
        var bytes: Int
    }

    private struct State {
        var submissions: [Submission] = []
        /// The loop was asked to take the submissions and has not yet.
        var scheduled = false
        /// Set once the connection is closing or closed: later submissions fail with it at once.
        var closedError: RedisError?
        var outstandingCommands = 0
        var outstandingBytes = 0
    }

    enum Admission {
        case rejected(RedisError)
        /// The first submission since the loop last took them: schedule the loop.
        case schedule
        /// The loop is already scheduled; this many submissions wait now.
        case queued(waiting: Int)
    }

    let limits: Limits
    private let state = Locked(State())

    init(limits: Limits) {
        self.limits = limits
    }

    /// Takes `submission`, unless the connection is closed or the bound is reached.
    func admit(_ submission: Submission) -> Admission {
        let bytes = submission.bytes.count
        return state.withLock { state -> Admission in
            if let error = state.closedError { return .rejected(error) }
            if state.outstandingCommands > 0,
               state.outstandingCommands + submission.commands > limits.commands
                || state.outstandingBytes + bytes > limits.bytes
            {
                return .rejected(Self.overloaded(state.outstandingCommands, state.outstandingBytes, limits))
            }
            state.outstandingCommands += submission.commands
            state.outstandingBytes += bytes
            state.submissions.append(submission)
            if state.scheduled { return .queued(waiting: state.submissions.count) }
            state.scheduled = true
            return .schedule
        }
    }

    /// Moves every waiting submission into `batch` (empty, its storage reused) and gives back `released`. Returns
    /// the error the connection closed with, if it did. Loop only.
    func take(into batch: inout [Submission], releasing released: CommandCost) -> RedisError? {
        state.withLock { state in
            swap(&batch, &state.submissions)
            state.scheduled = false
            state.outstandingCommands -= released.commands
            state.outstandingBytes -= released.bytes
            return state.closedError
        }
    }

    /// Gives back the cost of work that is finished (answered, failed, never written).
    func release(_ released: CommandCost) {
        guard released != .none else { return }
        state.withLock { state in
            state.outstandingCommands -= released.commands
            state.outstandingBytes -= released.bytes
        }
    }

    /// From now on every submission fails with `error` (the first one set stays); those already waiting stay, to be
    /// written (a graceful close writes what was submitted before it).
    func refuseNew(_ error: RedisError) {
        state.withLock { state in
            if state.closedError == nil { state.closedError = error }
        }
    }

    /// From now on every submission fails with `error` (the first one set stays). Returns what was waiting, to fail.
    func close(_ error: RedisError) -> [Submission] {
        state.withLock { state in
            if state.closedError == nil { state.closedError = error }
            let leftovers = state.submissions
            state.submissions = []
            for submission in leftovers {
                state.outstandingCommands -= submission.commands
                state.outstandingBytes -= submission.bytes.count
            }
            return leftovers
        }
    }

    /// The error later submissions fail with, once closing or closed.
    var closedError: RedisError? { state.withLock { $0.closedError } }

    /// Work admitted and not yet finished (for tests and introspection).
    var outstanding: (commands: Int, bytes: Int) {
        state.withLock { ($0.outstandingCommands, $0.outstandingBytes) }
    }

    private static func overloaded(_ commands: Int, _ bytes: Int, _ limits: Limits) -> RedisError {
        RedisError(
            .overloaded,
            "\(commands) commands (\(bytes) bytes) are waiting for the server already, the most this connection holds "
                + "(maximumPendingCommands \(limits.commands), maximumPendingBytes \(limits.bytes)): the server answers "
                + "slower than the callers send, or not at all; nothing was sent")
    }
}
