/// Someone awaiting a command's reply.
enum Request {
    /// A caller that may stop waiting at any time (task cancellation): ``RedisConnection/send(_:)``.
    case cancellable(Pending<RedisValue>)
    /// A caller resumed only by the reply, the command timeout or the connection's end (on the loop, or at
    /// submission when the connection is already closed); it cannot leave early, so its wait needs no lock and no
    /// cancellation handler (publishing).
    case direct(UnsafeContinuation<Result<RedisValue, RedisError>, Never>)
    /// One command of a batch written together; the batch resumes its caller once every command is resolved.
    case batchPart(Batch)

    /// Whether nobody waits any more (a cancelled request not yet written needs no writing).
    var isFinished: Bool {
        if case .cancellable(let pending) = self { pending.isFinished } else { false }
    }

    /// Hands over a reply: an error reply fails the request, except in a batch that keeps error replies
    /// (a transaction's).
    func deliver(_ reply: RedisValue) {
        if case .error(let message) = reply {
            if case .batchPart(let batch) = self, batch.keepsErrorReplies {
                batch.resolveNext(.success(reply))
            } else {
                fail(RedisError.server(message))
            }
        } else {
            succeed(reply)
        }
    }

    func succeed(_ value: RedisValue) {
        switch self {
        case .cancellable(let pending): pending.succeed(value)
        case .direct(let continuation): continuation.resume(returning: .success(value))
        case .batchPart(let batch): batch.resolveNext(.success(value))
        }
    }

    func fail(_ error: RedisError) {
        switch self {
        case .cancellable(let pending): pending.fail(error)
        case .direct(let continuation): continuation.resume(returning: .failure(error))
        case .batchPart(let batch): batch.resolveNext(.failure(error))
        }
    }
}

/// The replies of commands written together, for one caller: it is resumed once every command has its reply, its
/// timeout or the connection's end, with the replies in order or the first failure.
final class Batch: @unchecked Sendable {
    // @unchecked Sendable because: the caller only creates it; from its submission on, only the loop touches it.
    private var replies: [RedisValue] = []
    private var failure: RedisError?
    private let count: Int
    private let continuation: UnsafeContinuation<Result<[RedisValue], RedisError>, Never>
    /// Error replies are kept in `replies` as ``RedisValue/error(_:)`` instead of failing the batch (a transaction
    /// judges them itself); a timeout or a lost connection still fails it.
    let keepsErrorReplies: Bool

    init(count: Int, keepsErrorReplies: Bool = false, continuation: UnsafeContinuation<Result<[RedisValue], RedisError>, Never>) {
        precondition(count > 0)
        self.count = count
        self.keepsErrorReplies = keepsErrorReplies
        self.continuation = continuation
        replies.reserveCapacity(count)
    }

    /// The outcome of the next command (outcomes arrive in the order the commands were written; a batch that was
    /// never written gets one failure per command).
    func resolveNext(_ outcome: Result<RedisValue, RedisError>) {
        switch outcome {
        case .success(let reply): replies.append(reply)
        case .failure(let error):
            if failure == nil { failure = error }
            replies.append(.null)
        }
        guard replies.count == count else { return }
        continuation.resume(returning: failure.map { .failure($0) } ?? .success(replies))
    }
}

/// Commands to write (one, or a batch), with whoever awaits their replies.
struct Submission {
    let bytes: [UInt8]
    let request: Request
    /// How many commands `bytes` holds: each gets its slot in the request queue.
    var commands = 1
    /// How long the replies may take, when not the configured command timeout (a blocking command's).
    var timeout: Duration?

    /// Fails a submission that was never written: each of its commands.
    func fail(_ error: RedisError) {
        for _ in 0..<commands { request.fail(error) }
    }
}
