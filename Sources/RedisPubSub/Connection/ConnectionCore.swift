#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Logging

/// The reply an UNSUBSCRIBE-family command waits for: `["sunsubscribe", name, count]` and the like. An
/// unsubscribe-shaped reply that is not the one awaited is the server's own decision (a sharded channel's slot moved).
struct Acknowledgement: Hashable {
    let type: [UInt8]
    let name: [UInt8]
}

/// Receives the Pub/Sub pushes and connection changes of a Subscriber connection. Loop-confined.
protocol PushHandler: AnyObject {
    /// Takes `reply` if it is a push other than a message (an unsubscribe the server decided on); returns `false` for
    /// replies to requests. `awaited` is the acknowledgement the oldest command in flight waits for, if any.
    func handlePush(_ reply: RedisValue, awaited: Acknowledgement?) -> Bool
    /// A message recognised in the raw reply (the fast path of ``handlePush(_:awaited:)``).
    func handleMessage(_ push: RawPush)
    /// The end of one read from the socket: hand what was routed to the consumers.
    func flush()
    /// The connection was lost at `date` and will be retried: nothing arrives until ``connectionRestored(at:downtime:)``.
    func connectionLost(_ error: RedisError, at date: Date)
    /// Connected again (handshake done): re-establish what the server forgot.
    func connectionRestored(at date: Date, downtime: Duration)
    /// Closed for good: by `close()` (`nil`) or by `error`.
    func connectionClosed(_ error: RedisError?)
}

/// The event-loop half of a connection: connects (resolving, trying each address, handshaking), writes submitted
/// commands in batches, matches replies to their callers in order, times commands out, reconnects with backoff when
/// the connection is lost, checks an idle connection's health, and closes.
///
/// Callers on any thread use ``submit(_:)``, ``close(_:)`` and ``events``; everything else runs on ``loop``.
final class ConnectionCore: HiredisContextDelegate, @unchecked Sendable {
    // @unchecked Sendable because: `inbox` is Locked, `events` is Sendable, and `loop`, `configuration` and `logger`
    // are immutable; every other stored property is touched only on the loop thread (asserted at the entry points).

    /// Someone awaiting a command's reply.
    enum Request {
        /// A caller that may stop waiting at any time (task cancellation): ``RedisConnection/send(_:)``.
        case cancellable(Pending<RedisValue>)
        /// A caller resumed only by the reply, the command timeout or the connection's end (on the loop, or at
        /// submission when the connection is already closed); it cannot leave early, so its wait needs no lock and no
        /// cancellation handler (publishing).
        case direct(UnsafeContinuation<RedisValue, any Error>)
        /// One command of a batch written together; the batch resumes its caller once every command is resolved.
        case batchPart(Batch)

        /// Whether nobody waits any more (a cancelled request not yet written needs no writing).
        var isFinished: Bool {
            if case .cancellable(let pending) = self { pending.isFinished } else { false }
        }

        func succeed(_ value: RedisValue) {
            switch self {
            case .cancellable(let pending): pending.succeed(value)
            case .direct(let continuation): continuation.resume(returning: value)
            case .batchPart(let batch): batch.resolveNext(.success(value))
            }
        }

        func fail(_ error: any Error) {
            switch self {
            case .cancellable(let pending): pending.fail(error)
            case .direct(let continuation): continuation.resume(throwing: error)
            case .batchPart(let batch): batch.resolveNext(.failure(error))
            }
        }
    }

    /// The replies of commands written together, for one caller: it is resumed once every command has its reply, its
    /// timeout or the connection's end, with the replies in order or the first failure.
    final class Batch: @unchecked Sendable {
        // @unchecked Sendable because: the caller only creates it; from its submission on, only the loop touches it.
        private var replies: [RedisValue] = []
        private var failure: (any Error)?
        private let count: Int
        private let continuation: UnsafeContinuation<[RedisValue], any Error>

        init(count: Int, continuation: UnsafeContinuation<[RedisValue], any Error>) {
            precondition(count > 0)
            self.count = count
            self.continuation = continuation
            replies.reserveCapacity(count)
        }

        /// The outcome of the next command (outcomes arrive in the order the commands were written; a batch that was
        /// never written gets one failure per command).
        func resolveNext(_ outcome: Result<RedisValue, any Error>) {
            switch outcome {
            case .success(let reply): replies.append(reply)
            case .failure(let error):
                if failure == nil { failure = error }
                replies.append(.null)
            }
            guard replies.count == count else { return }
            if let failure { continuation.resume(throwing: failure) } else { continuation.resume(returning: replies) }
        }

    }

    /// Commands to write (one, or a batch), with whoever awaits their replies.
    struct Submission {
        let bytes: [UInt8]
        let request: Request
        /// How many commands `bytes` holds: each gets its slot in the request queue.
        var commands = 1

        /// Fails a submission that was never written: each of its commands.
        func fail(_ error: any Error) {
            for _ in 0..<commands { request.fail(error) }
        }
    }

    enum Waiter {
        case request(Request)
        /// A step of the connect handshake; `final` is the last one (the PING).
        case handshake(command: String, final: Bool)
        /// A command the package sends for itself (subscriptions, health checks); the handler runs on the loop.
        /// `expects` names the acknowledgement an UNSUBSCRIBE-family command waits for.
        case ownCommand((Result<RedisValue, RedisError>) -> Void, expects: Acknowledgement?)
    }

    private struct Inbox {
        var submissions: [Submission] = []
        var scheduled = false
        /// Set once the connection is closed or closing: later submissions fail with it at once.
        var closedError: RedisError?
    }

    private enum State {
        case idle
        /// One connect attempt: resolving (no context yet) or connecting to one address, with the ones left to try.
        case connecting(remaining: [HiredisContext.Address])
        case handshaking
        case ready
        /// Between attempts, waiting out the backoff delay.
        case waitingToRetry
        /// `close()` was called: in-flight commands finish, then the context closes.
        case closing
        case closed
    }

    let loop: EventLoop
    let configuration: RedisConfiguration
    let logger: Logger
    /// Connection changes, for any number of listeners.
    let events = EventBroadcaster<ConnectionEvent>()
    private let inbox = Locked(Inbox())

    /// Set on Subscriber connections before `connect`: receives pushes and connection changes.
    var pushHandler: (any PushHandler)?
    /// Set on Subscriber connections before `connect`: PING after `healthCheckInterval` of silence.
    var healthCheckEnabled = false

    private var state = State.idle
    private var context: HiredisContext?
    private var queue = RequestQueue<Waiter>()
    private var timeoutTimer: LoopTimer?
    private var attemptTimer: LoopTimer?
    private var retryTimer: LoopTimer?
    private var attemptDeadline = ContinuousClock.now
    /// While the first connection is being made: when to give up.
    private var startupDeadline: ContinuousClock.Instant?
    private var connectWaiter: Pending<Void>?
    private var everConnected = false
    private var failedAttempts = 0
    private var lastError: RedisError?
    private var lostAt: ContinuousClock.Instant?
    private var closeWaiters: [@Sendable () -> Void] = []
    private var readyWaiters: [Pending<Void>] = []
    private var spareSubmissions: [Submission] = []
    private var random = SystemRandomNumberGenerator()
    // Health check.
    private var lastReceived = ContinuousClock.now
    private var healthTimer: LoopTimer?
    private var healthPingDeadline: LoopTimer?

    init(configuration: RedisConfiguration, logger: Logger, loop: EventLoop) {
        self.configuration = configuration
        self.logger = logger
        self.loop = loop
    }

    // MARK: Any thread

    /// Queues a command for writing. The loop writes every command queued before it runs in one batch.
    func submit(_ submission: Submission) {
        enum Next { case fail(RedisError), schedule, writeNow, none }
        let next = inbox.withLock { inbox -> Next in
            if let error = inbox.closedError { return .fail(error) }
            inbox.submissions.append(submission)
            if inbox.scheduled {
                return inbox.submissions.count >= Self.earlyWriteThreshold && loop.inLoop ? .writeNow : .none
            }
            inbox.scheduled = true
            return .schedule
        }
        switch next {
        case .fail(let error): submission.fail(error)
        case .schedule: loop.execute { self.drainInbox() }
        case .writeNow: drainInbox()
        case .none: break
        }
    }

    /// A task running on the loop (``RedisConnection/taskExecutor``) that makes the this-many-th submission since
    /// the last write writes them all at once instead of waiting for the end of the loop's turn: the server starts
    /// on them while the loop runs the remaining tasks, rather than everything alternating in lockstep.
    ///
    /// Safe because `submit` is reached on the loop only from task code, which the loop runs from its job queue with
    /// no package method on the stack (resuming a continuation only enqueues). Package code never calls `submit`.
    static let earlyWriteThreshold = 32

    /// Closes the connection after its in-flight commands are answered or timed out; commands submitted after this
    /// fail with ``RedisError/Code/connectionClosed``. `completion` runs once the socket is closed.
    func close(_ completion: (@Sendable () -> Void)? = nil) {
        inbox.withLock { inbox in
            if inbox.closedError == nil {
                inbox.closedError = RedisError(.connectionClosed, "the connection was closed by close()")
            }
        }
        loop.execute { self.beginClose(completion) }
    }

    // MARK: Connecting (loop)

    /// Starts connecting; `waiter` succeeds when the first handshake is done. Refused and unreachable servers are
    /// retried with the reconnect backoff until the connect timeout is up.
    func connect(_ waiter: Pending<Void>) {
        loop.assertInLoop()
        guard case .idle = state else {
            waiter.fail(RedisError(.connectionClosed, "the connection is already closed"))
            return
        }
        connectWaiter = waiter
        startupDeadline = .now + configuration.connectTimeout
        startAttempt()
    }

    private func startAttempt() {
        state = .connecting(remaining: [])
        let now = ContinuousClock.now
        attemptDeadline = min(startupDeadline ?? now + configuration.connectTimeout, now + configuration.connectTimeout)
        attemptTimer = loop.scheduleTimer(at: attemptDeadline) { [self] in
            attemptTimer = nil
            failAttempt(RedisError(.timeout, "connecting to \(configuration) timed out after \(configuration.connectTimeout)"))
        }
        switch configuration.endpoint {
        case .unixSocket(let path):
            tryAddresses([.unix(path: path)])
        case .tcp(let host, let port):
            if AddressResolver.isNumeric(host) {
                tryAddresses([.tcp(ip: host, port: port)])
            } else {
                AddressResolver.resolve(host: host, port: port) { result in
                    self.loop.execute { self.resolved(result) }
                }
            }
        }
    }

    private func resolved(_ result: Result<[HiredisContext.Address], RedisError>) {
        guard case .connecting = state, context == nil else { return }  // timed out or closed meanwhile
        switch result {
        case .success(let addresses): tryAddresses(addresses)
        case .failure(let error): failAttempt(error)
        }
    }

    private func tryAddresses(_ addresses: [HiredisContext.Address]) {
        var remaining = addresses[...]
        var error: RedisError?
        while let address = remaining.popFirst() {
            logger.debug("connecting", metadata: ["redis.address": "\(address)"])
            do {
                let created = try HiredisContext(address: address, loop: loop, delegate: self)
                created.decodesPushes = pushHandler != nil
                context = created
                state = .connecting(remaining: Array(remaining))
                return
            } catch let failure {
                logger.debug("connect failed", metadata: ["redis.address": "\(address)", "error": "\(failure)"])
                error = failure
            }
        }
        failAttempt(error ?? RedisError(.connectionRefused, "no address to connect to"))
    }

    func hiredisContextDidConnect() {
        guard case .connecting = state, let context else { return }
        state = .handshaking
        // AUTH, SELECT and CLIENT SETNAME as configured, then PING: pipelined in one write. The PING also surfaces
        // a server that refuses unauthenticated clients or is out of client slots before `connect` returns.
        var steps: [(String, [RedisArgument])] = []
        if let password = configuration.password {
            var auth: [RedisArgument] = ["AUTH"]
            if let username = configuration.username { auth.append(RedisArgument(username)) }
            auth.append(RedisArgument(password))
            steps.append(("AUTH", auth))
        }
        if configuration.database != 0 {
            steps.append(("SELECT", ["SELECT", RedisArgument(configuration.database)]))
        }
        if let name = configuration.clientName {
            steps.append(("CLIENT SETNAME", ["CLIENT", "SETNAME", RedisArgument(name)]))
        }
        steps.append(("PING", ["PING"]))
        for (index, (name, arguments)) in steps.enumerated() {
            RESP.encode(arguments).withUnsafeBytes { context.append($0) }
            queue.append(.handshake(command: name, final: index == steps.count - 1), deadline: attemptDeadline)
        }
        context.flush()
    }

    private func handshakeReply(_ reply: RedisValue, command: String, final: Bool) {
        if case .error(let message) = reply {
            let error: RedisError
            switch command {
            case "AUTH": error = RedisError(.authenticationFailed, "authentication failed: \(message)")
            case "SELECT", "CLIENT SETNAME": error = RedisError(.invalidConfiguration, "\(command) failed: \(message)")
            default: error = RedisError.server(message)
            }
            failAttempt(error)
            return
        }
        if final { becomeReady() }
    }

    private func becomeReady() {
        attemptTimer?.cancel()
        attemptTimer = nil
        failedAttempts = 0
        lastError = nil
        state = .ready
        let date = Date()
        if everConnected {
            let downtime = lostAt.map { ContinuousClock.now - $0 } ?? .zero
            logger.info("reconnected", metadata: ["redis.endpoint": "\(configuration)", "redis.downtime": "\(downtime)"])
            events.send(.reconnected(at: date, downtime: downtime))
            pushHandler?.connectionRestored(at: date, downtime: downtime)
        } else {
            everConnected = true
            startupDeadline = nil
            logger.debug("connected", metadata: ["redis.endpoint": "\(configuration)"])
            events.send(.connected(at: date))
            connectWaiter?.succeed(())
            connectWaiter = nil
        }
        for waiter in readyWaiters { waiter.succeed(()) }
        readyWaiters = []
        startHealthCheck()
        drainInbox()
    }

    /// One attempt failed before the connection was ready: retry with backoff, or give up.
    private func failAttempt(_ error: RedisError) {
        switch state {
        case .idle, .connecting, .handshaking: break
        case .ready, .waitingToRetry, .closing, .closed: return
        }
        attemptTimer?.cancel()
        attemptTimer = nil
        if let context {
            self.context = nil
            context.close(cause: error)
        }
        // Only handshake steps can be queued before the connection is ready; anything else still gets its answer.
        for waiter in queue.removeAll() {
            switch waiter {
            case .request(let request): request.fail(error)
            case .ownCommand(let handler, _): handler(.failure(RedisError(.connectionClosed, error.message)))
            case .handshake: break
            }
        }
        // An attempt cut short by the clock says less than the failure before it: report that one when giving up.
        let cause = error.code == .timeout ? (lastError ?? error) : error
        lastError = error
        failedAttempts += 1
        logger.debug("connect attempt failed", metadata: ["redis.endpoint": "\(configuration)", "error": "\(error)"])
        guard Self.isRetryable(error), configuration.reconnect.allowsAttempt(after: failedAttempts) else {
            finish(Self.isRetryable(error) ? cause : error)
            return
        }
        let delay = configuration.reconnect.delay(attempt: failedAttempts - 1, using: &random)
        if let startupDeadline, ContinuousClock.now + delay >= startupDeadline {
            finish(cause)  // the start-up time is up
            return
        }
        scheduleRetry(after: delay)
    }

    private func scheduleRetry(after delay: Duration) {
        state = .waitingToRetry
        events.send(.reconnecting(attempt: failedAttempts + 1, delay: delay, lastError: lastError))
        retryTimer = loop.scheduleTimer(at: .now + delay) { [self] in
            retryTimer = nil
            startAttempt()
        }
    }

    /// Errors that waiting cannot fix end the connection instead of being retried.
    static func isRetryable(_ error: RedisError) -> Bool {
        switch error.code {
        case .authenticationFailed, .invalidConfiguration, .permissionDenied, .invalidArgument: false
        default: true
        }
    }

    /// Resumes `waiter` once the connection is ready (at once if it is); fails it if the connection closes for good.
    func whenReady(_ waiter: Pending<Void>) {
        loop.assertInLoop()
        switch state {
        case .ready: waiter.succeed(())
        case .closing, .closed: waiter.fail(inbox.withLock { $0.closedError } ?? RedisError(.connectionClosed, "closed"))
        case .idle, .connecting, .handshaking, .waitingToRetry: readyWaiters.append(waiter)
        }
    }

    // MARK: Commands (loop)

    private func drainInbox() {
        loop.assertInLoop()
        var submissions: [Submission] = []
        swap(&submissions, &spareSubmissions)  // moved, not copied: the inbox gets unique storage
        let closedError = inbox.withLock { inbox -> RedisError? in
            swap(&submissions, &inbox.submissions)
            inbox.scheduled = false
            return inbox.closedError
        }
        defer {
            submissions.removeAll(keepingCapacity: true)
            spareSubmissions = submissions
        }
        guard !submissions.isEmpty else { return }
        guard acceptsWrites, let context else {
            let error = closedError ?? RedisError(
                .connectionClosed, "not connected: reconnecting" + (lastError.map { " after: \($0.message)" } ?? ""))
            for submission in submissions { submission.fail(error) }
            return
        }
        let deadline = ContinuousClock.now + configuration.commandTimeout
        for (index, submission) in submissions.enumerated() {
            if submission.request.isFinished { continue }  // cancelled before writing: not sent
            submission.bytes.withUnsafeBytes { context.append($0) }
            // Buffering can fail (out of memory) and close the context at once: then nothing more may be queued for
            // it, or the next connection's replies would be matched to these.
            guard self.context === context else {
                let error = RedisError(.connectionClosed, "the connection closed while commands were being written")
                for unwritten in submissions[index...] { unwritten.fail(error) }
                return
            }
            for _ in 0..<submission.commands { queue.append(.request(submission.request), deadline: deadline) }
        }
        context.flush()
        armTimeoutTimer()
    }

    private static func acknowledgement(_ waiter: Waiter) -> Acknowledgement? {
        if case .ownCommand(_, let expects) = waiter { return expects }
        return nil
    }

    private var acceptsWrites: Bool {
        switch state {
        case .ready, .closing: true
        case .idle, .connecting, .handshaking, .waitingToRetry, .closed: false
        }
    }

    func hiredisContextDidReceive(_ reply: RedisValue) {
        if let pushHandler, pushHandler.handlePush(reply, awaited: queue.peek().flatMap(Self.acknowledgement)) {
            return
        }
        switch queue.popOwner() {
        case .waiter(.request(let request)):
            if case .error(let message) = reply {
                request.fail(RedisError.server(message))
            } else {
                request.succeed(reply)
            }
        case .waiter(.handshake(let command, let final)):
            handshakeReply(reply, command: command, final: final)
        case .waiter(.ownCommand(let handler, _)):
            if case .error(let message) = reply {
                handler(.failure(RedisError.server(message)))
            } else {
                handler(.success(reply))
            }
        case .abandoned:
            logger.trace("discarded the late reply of a timed-out or cancelled command")
        case .none:
            // Unsolicited: an error here is the server's reason for closing (e.g. max clients reached).
            if case .error(let message) = reply {
                context?.close(cause: RedisError.server(message))
            } else {
                context?.close(cause: RedisError(.protocolError, "unexpected reply from the server: \(reply)"))
            }
        }
        closeIfDrained()
    }

    func hiredisContextDidReceivePush(_ push: RawPush) {
        pushHandler?.handleMessage(push)
    }

    func hiredisContextDidFinishReading() {
        if healthCheckEnabled { lastReceived = .now }
        pushHandler?.flush()
    }

    /// Writes a command the package sends for itself; `handler` gets its reply, or the error that ended the
    /// connection. Loop only.
    func sendInternal(
        _ arguments: [RedisArgument],
        expects acknowledgement: Acknowledgement? = nil,
        handler: @escaping (Result<RedisValue, RedisError>) -> Void
    ) {
        loop.assertInLoop()
        guard acceptsWrites, let context else {
            handler(.failure(inbox.withLock { $0.closedError } ?? RedisError(.connectionClosed, "not connected")))
            return
        }
        RESP.encode(arguments).withUnsafeBytes { context.append($0) }
        queue.append(.ownCommand(handler, expects: acknowledgement), deadline: .now + configuration.commandTimeout)
        context.flush()
        armTimeoutTimer()
    }

    /// Closes the current connection at once with `error` (then reconnects, unless closing). Loop only.
    func closeNow(_ error: RedisError) {
        loop.assertInLoop()
        context?.close(cause: error)
    }

    private func armTimeoutTimer() {
        guard timeoutTimer == nil, let deadline = queue.nextDeadline else { return }
        timeoutTimer = loop.scheduleTimer(at: deadline) { [self] in
            timeoutTimer = nil
            expireTimeouts()
        }
    }

    private func expireTimeouts() {
        var handshakeTimedOut: String?
        for waiter in queue.expire(now: .now) {
            switch waiter {
            case .request(let request):
                request.fail(RedisError(.timeout, "no reply within the command timeout of \(configuration.commandTimeout)"))
            case .handshake(let command, _):
                handshakeTimedOut = handshakeTimedOut ?? command
            case .ownCommand(let handler, _):
                handler(.failure(RedisError(.timeout, "no reply within the command timeout of \(configuration.commandTimeout)")))
            }
        }
        if let command = handshakeTimedOut {
            failAttempt(RedisError(.timeout, "\(command) got no reply within the connect timeout of \(configuration.connectTimeout)"))
            return
        }
        closeIfDrained()
        armTimeoutTimer()
    }

    // MARK: Health check (loop)

    private func startHealthCheck() {
        guard healthCheckEnabled, let interval = configuration.healthCheckInterval else { return }
        lastReceived = .now
        scheduleHealthCheck(at: lastReceived + interval)
    }

    private func scheduleHealthCheck(at deadline: ContinuousClock.Instant) {
        healthTimer?.cancel()
        healthTimer = loop.scheduleTimer(at: deadline) { [self] in
            healthTimer = nil
            healthCheckDue()
        }
    }

    private func healthCheckDue() {
        guard case .ready = state, let interval = configuration.healthCheckInterval else { return }
        let idleSince = lastReceived
        guard ContinuousClock.now - idleSince >= interval else {
            scheduleHealthCheck(at: idleSince + interval)
            return
        }
        // Silent for a whole interval: PING. hiredis never sees it (replies are matched here), so the PONG of a
        // subscribed connection (`["pong", ""]`) is fine on every hiredis version.
        let timeout = configuration.healthCheckTimeout
        healthPingDeadline = loop.scheduleTimer(at: .now + timeout) { [self] in
            healthPingDeadline = nil
            logger.notice("health check failed: no PONG", metadata: ["redis.endpoint": "\(configuration)"])
            closeNow(RedisError(.timeout, "health check: no reply to PING within \(timeout); the connection is replaced"))
        }
        sendInternal(["PING"]) { [self] result in
            healthPingDeadline?.cancel()
            healthPingDeadline = nil
            if case .success = result, case .ready = state, let interval = configuration.healthCheckInterval {
                scheduleHealthCheck(at: lastReceived + interval)
            }
        }
    }

    private func stopHealthCheck() {
        healthTimer?.cancel()
        healthTimer = nil
        healthPingDeadline?.cancel()
        healthPingDeadline = nil
    }

    // MARK: Losing the connection (loop)

    func hiredisContextDidClose(_ error: RedisError) {
        guard context != nil else { return }  // a context we detached and closed ourselves
        context = nil
        switch state {
        case .connecting(let remaining) where !remaining.isEmpty:
            tryAddresses(remaining)
        case .connecting, .handshaking:
            failAttempt(error)
        case .ready:
            connectionLost(error)
        case .closing:
            finish(nil)
        case .idle, .waitingToRetry, .closed:
            break
        }
    }

    private func connectionLost(_ error: RedisError) {
        stopHealthCheck()
        timeoutTimer?.cancel()
        timeoutTimer = nil
        let now = ContinuousClock.now
        lostAt = now
        lastError = error
        logger.notice("connection lost", metadata: ["redis.endpoint": "\(configuration)", "error": "\(error)"])
        let date = Date()
        events.send(.disconnected(at: date, cause: error))
        // Commands in flight may or may not have run: they fail now, and are not sent again. The package's own
        // commands learn only that the connection is gone (a protocol error as the cause is not a refusal).
        let lost = RedisError(.connectionClosed, "connection lost: \(error.message)")
        for waiter in queue.removeAll() {
            switch waiter {
            case .request(let request): request.fail(error)
            case .ownCommand(let handler, _): handler(.failure(lost))
            case .handshake: break
            }
        }
        pushHandler?.connectionLost(error, at: date)
        guard configuration.reconnect.allowsAttempt(after: 0) else {
            finish(error)
            return
        }
        failedAttempts = 0
        scheduleRetry(after: configuration.reconnect.delay(attempt: 0, using: &random))
    }

    // MARK: Closing (loop)

    private func beginClose(_ completion: (@Sendable () -> Void)?) {
        if let completion { closeWaiters.append(completion) }
        switch state {
        case .idle, .connecting, .handshaking, .waitingToRetry:
            finish(everConnected ? nil : RedisError(.connectionClosed, "the connection was closed while connecting"))
        case .ready:
            state = .closing
            stopHealthCheck()
            drainInbox()  // what was submitted before close() is in flight too (a write error may finish us here)
            closeIfDrained()
        case .closing:
            break
        case .closed:
            runCloseWaiters()
        }
    }

    private func closeIfDrained() {
        guard case .closing = state, queue.liveCount == 0 else { return }
        if let context {
            context.close(cause: RedisError(.connectionClosed, "the connection was closed by close()"))
        } else {
            finish(nil)
        }
    }

    /// The end: `nil` for `close()`, else the error that ended it. Fails everything still waiting.
    private func finish(_ error: RedisError?) {
        if case .closed = state { return }
        state = .closed
        for timer in [attemptTimer, retryTimer, timeoutTimer] { timer?.cancel() }
        attemptTimer = nil
        retryTimer = nil
        timeoutTimer = nil
        stopHealthCheck()
        let failure = error ?? RedisError(.connectionClosed, "the connection was closed by close()")
        let leftovers = inbox.withLock { inbox -> (RedisError, [Submission]) in
            if inbox.closedError == nil { inbox.closedError = failure }
            let submissions = inbox.submissions
            inbox.submissions = []
            return (inbox.closedError!, submissions)
        }
        let closed = failure.code == .connectionClosed ? failure : RedisError(.connectionClosed, failure.message)
        for waiter in queue.removeAll() {
            switch waiter {
            case .request(let request): request.fail(failure)
            case .ownCommand(let handler, _): handler(.failure(closed))
            case .handshake: break
            }
        }
        for submission in leftovers.1 { submission.fail(leftovers.0) }
        connectWaiter?.fail(failure)
        connectWaiter = nil
        for waiter in readyWaiters { waiter.fail(failure) }
        readyWaiters = []
        pushHandler?.connectionClosed(error)
        pushHandler = nil
        if let context {
            self.context = nil
            context.close(cause: failure)
        }
        if everConnected {
            if let error {
                logger.notice("connection closed", metadata: ["redis.endpoint": "\(configuration)", "error": "\(error)"])
            } else {
                logger.debug("connection closed", metadata: ["redis.endpoint": "\(configuration)"])
            }
        } else if let error {
            logger.debug("connect failed", metadata: ["redis.endpoint": "\(configuration)", "error": "\(error)"])
        }
        events.send(.closed(error: error))
        events.finish()
        runCloseWaiters()
    }

    private func runCloseWaiters() {
        let waiters = closeWaiters
        closeWaiters = []
        for waiter in waiters { waiter() }
    }
}
