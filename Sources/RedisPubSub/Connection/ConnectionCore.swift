#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import DequeModule
import Logging

/// The event-loop half of a connection: carries out what its ``ConnectionStateMachine`` decides (resolving, opening
/// sockets, writing the handshake, timers, health-check PINGs, failing what waits), and does the per-command work the
/// machine leaves to it: writing submitted commands in batches, matching replies to their callers in order, and timing
/// commands out.
///
/// Callers on any thread use ``submit(_:)``, ``close(_:)``, ``forceClose()`` and ``events``; everything else runs on
/// ``loop``.
final class ConnectionCore: HiredisContextDelegate, @unchecked Sendable {
    // @unchecked Sendable because: `inbox` and `events` are Sendable, and `loop`, `configuration` and `logger` are
    // immutable; every other stored property is touched only on the loop thread (asserted at the entry points).

    /// Whoever waits for a written command's reply.
    enum Waiter {
        case request(Request)
        /// A command the package sends for itself (subscriptions, health checks); the handler runs on the loop.
        /// `expects` names the acknowledgement an UNSUBSCRIBE-family command waits for.
        case ownCommand((Result<RedisValue, RedisError>) -> Void, expects: Acknowledgement?)
    }

    let loop: EventLoop
    let configuration: RedisConfiguration
    let logger: Logger
    /// Connection changes, for any number of listeners.
    let events = EventBroadcaster<ConnectionEvent>()
    /// Commands submitted from any thread, and the bound on outstanding work.
    let inbox: CommandInbox
    /// How much answered work may wait before it is given back to the bound outside a write: 1/16 of the bound.
    private let releaseBatch: CommandCost

    /// Set on Subscriber connections before `connect`: receives pushes and connection changes.
    var pushHandler: (any PushHandler)?

    private var machine: ConnectionStateMachine
    private var context: HiredisContext? {
        didSet { if context !== oldValue { backlog.removeAll() } }  // bytes meant for the old socket die with it
    }
    /// Commands written by callers and not yet handed to hiredis, in order. hiredis moves the rest of its output
    /// buffer after every partial write, so a large buffer costs time quadratic in its size on the loop thread; it is
    /// kept under ``outputHighWater`` instead and refilled as the socket drains it.
    private var backlog = Deque<ArraySlice<UInt8>>()
    private var queue = RequestQueue<Waiter>()
    private var timers: [ConnectionStateMachine.Timer: LoopTimer] = [:]
    private var timeoutTimer: LoopTimer?
    /// When `timeoutTimer` fires.
    private var timeoutTimerDeadline: ContinuousClock.Instant?
    /// When the connection last read anything: the health check and the overdue-command rule judge silence by it.
    private var lastRead = ContinuousClock.now
    private var connectWaiter: Pending<Void>?
    /// For a connect started on the loop (``connect(completion:)``): runs there when the first handshake is done.
    private var connectCompletion: (() -> Void)?
    private var closeWaiters: [@Sendable () -> Void] = []
    private var readyWaiters: [Pending<Void>] = []
    private var spareSubmissions: [Submission] = []
    /// The TLS files as read for the current socket, and as read for the last socket that became ready.
    private var currentTLSContext: TLSContext?
    private var lastGoodTLSContext: TLSContext?

    init(configuration: RedisConfiguration, logger: Logger, loop: EventLoop) {
        self.configuration = configuration
        self.logger = logger
        self.loop = loop
        self.inbox = CommandInbox(
            limits: .init(commands: configuration.maximumPendingCommands, bytes: configuration.maximumPendingBytes))
        self.releaseBatch = CommandCost(
            commands: max(1, configuration.maximumPendingCommands / 16), bytes: max(1, configuration.maximumPendingBytes / 16))
        let fixedAddress: ServerAddress?
        switch configuration.endpoint {
        case .unixSocket(let path): fixedAddress = .unix(path: path)
        case .tcp(let host, let port): fixedAddress = AddressResolver.isNumeric(host) ? .tcp(ip: host, port: port) : nil
        }
        let settings = ConnectionStateMachine.Settings(
            endpointDescription: configuration.description,
            fixedAddress: fixedAddress,
            connectTimeout: configuration.connectTimeout,
            commandTimeout: configuration.commandTimeout,
            reconnect: configuration.reconnect,
            healthCheck: configuration.healthCheckInterval.map {
                HealthCheck(interval: $0, timeout: configuration.healthCheckTimeout)
            },
            handshake: Handshake(
                authenticates: configuration.password != nil,
                database: configuration.database,
                clientName: configuration.clientName),
            usesTLS: configuration.tls != nil)
        var system = SystemRandomNumberGenerator()
        machine = ConnectionStateMachine(settings: settings, seed: system.next())
    }

    // MARK: Any thread

    /// Queues a command for writing. The loop writes every command queued before it runs in one batch. Fails the
    /// submission at once when the connection is closed or holds as much outstanding work as it may.
    func submit(_ submission: Submission) {
        switch inbox.admit(submission) {
        case .rejected(let error): submission.fail(error)
        case .schedule: loop.execute { self.drainInbox() }
        case .queued(let waiting):
            if waiting >= Self.earlyWriteThreshold && loop.inLoop { drainInbox() }
        }
    }

    /// A task running on the loop (``RedisConnection/taskExecutor``) that makes the this-many-th submission since
    /// the last write writes them all at once instead of waiting for the end of the loop's turn: the server starts
    /// on them while the loop runs the remaining tasks, rather than everything alternating in lockstep.
    ///
    /// Safe because `submit` is reached on the loop only from task code, which the loop runs from its job queue with
    /// no package method on the stack (resuming a continuation only enqueues). Package code never calls `submit`.
    static let earlyWriteThreshold = 32

    /// The most bytes handed to hiredis's output buffer at a time.
    static let outputHighWater = 512 * 1024

    /// Closes the connection after its in-flight commands are answered, timed out, or the command timeout passed;
    /// commands submitted after this fail with ``RedisError/Code/connectionClosed``. `completion` runs once the
    /// socket is closed.
    func close(_ completion: (@Sendable () -> Void)? = nil) {
        inbox.refuseNew(RedisError(.connectionClosed, "the connection was closed by close()"))
        loop.execute { self.beginClose(completion, force: false) }
    }

    /// Whether the connection is closed for good (closed, or its reconnect policy gave up). Loop only.
    var isClosed: Bool {
        loop.assertInLoop()
        return machine.isClosed
    }

    /// Closes at once: in-flight commands fail with ``RedisError/Code/connectionClosed``.
    func forceClose() {
        inbox.refuseNew(RedisError(.connectionClosed, "the connection was closed by close()"))
        loop.execute { self.beginClose(nil, force: true) }
    }

    // MARK: Carrying out the machine's decisions (loop)

    private func run(_ actions: [ConnectionStateMachine.Action]) {
        for action in actions {
            switch action {
            case .resolve(let attempt): resolve(attempt: attempt)
            case .open(let address): open(address)
            case .writeHandshake(let handshake): write(handshake)
            case .closeSocket(let cause):
                if let context {
                    self.context = nil  // detached first: its close reports nothing more
                    context.close(cause: cause)
                }
            case .schedule(let timer, let deadline): schedule(timer, at: deadline)
            case .cancel(let timer): timers.removeValue(forKey: timer)?.cancel()
            case .sendHealthPing: sendHealthPing()
            case .warn(let text): logger.warning("\(text)", metadata: ["redis.endpoint": "\(configuration)"])
            case .reconnecting(let attempt, let delay, let lastError):
                if let lastError {
                    logger.debug("connect attempt failed", metadata: ["redis.endpoint": "\(configuration)", "error": "\(lastError)"])
                }
                events.send(.reconnecting(attempt: attempt, delay: delay, lastError: lastError))
            case .ready(let downtime): becameReady(downtime: downtime)
            case .connectionLost(let error): connectionLost(error)
            case .finish(let error): finish(error)
            }
        }
    }

    private func schedule(_ timer: ConnectionStateMachine.Timer, at deadline: ContinuousClock.Instant) {
        timers[timer]?.cancel()
        timers[timer] = loop.scheduleTimer(at: deadline) { [self] in
            timers[timer] = nil  // a replaced timer is cancelled and never fires: this one is the current one
            run(machine.timerFired(timer, now: .now, lastRead: lastRead, busyUntil: queue.latestDeadline))
        }
    }

    // MARK: Connecting (loop)

    /// Starts connecting; `waiter` succeeds when the first handshake is done. Refused and unreachable servers are
    /// retried with the reconnect backoff until the connect timeout is up.
    func connect(_ waiter: Pending<Void>) {
        loop.assertInLoop()
        let actions = machine.start(now: .now)
        guard !actions.isEmpty else {
            waiter.fail(inbox.closedError ?? RedisError(.connectionClosed, "the connection is already closed"))
            return
        }
        connectWaiter = waiter
        run(actions)
    }

    /// Starts connecting from the loop; `ready` runs there once the first handshake is done. A connect that fails for
    /// good reports through ``PushHandler/connectionClosed(_:)`` (set `pushHandler` first) and the events.
    func connect(ready: @escaping () -> Void) {
        loop.assertInLoop()
        let actions = machine.start(now: .now)
        guard !actions.isEmpty else { return }
        connectCompletion = ready
        run(actions)
    }

    private func resolve(attempt: UInt64) {
        guard case .tcp(let host, let port) = configuration.endpoint else { return }
        AddressResolver.resolve(host: host, port: port) { result in
            self.loop.execute { self.run(self.machine.resolved(result, attempt: attempt, now: .now)) }
        }
    }

    private func open(_ address: ServerAddress) {
        if let stale = context {  // the machine closes before it opens; never leave one behind
            context = nil
            stale.close()
        }
        logger.debug("connecting", metadata: ["redis.address": "\(address)"])
        do {
            let created = try HiredisContext(address: address, loop: loop, delegate: self, tls: try makeTLSSession())
            created.decodesPushes = pushHandler != nil
            context = created
        } catch {
            logger.debug("connect failed", metadata: ["redis.address": "\(address)", "error": "\(error)"])
            run(machine.openFailed(error, now: .now))
        }
    }

    /// A TLS session for a new socket when the configuration asks for TLS, else `nil`. The files are read again for
    /// every socket (cheap next to the handshake itself), so certificates renewed on disk are used from the next one.
    /// A reconnect that finds them unreadable or mismatched (a rotation half done) uses those that worked last.
    private func makeTLSSession() throws(RedisError) -> TLSSession? {
        guard let tls = configuration.tls, case .tcp(let host, _) = configuration.endpoint else { return nil }
        let context: TLSContext
        do {
            context = try TLSContext(tls.settings)
        } catch {
            guard let lastGoodTLSContext else { throw error }
            logger.warning(
                "cannot read the TLS files again; using them as they were for the last connection",
                metadata: ["redis.endpoint": "\(configuration)", "error": "\(error)"])
            context = lastGoodTLSContext
        }
        currentTLSContext = context
        if !tls.verifiesServer {
            logger.warning(
                "TLS without verification: the server's certificate is not checked, so anyone on the path can pose as the server",
                metadata: ["redis.endpoint": "\(configuration)"])
        }
        // A link-local address's scope (`fe80::1%eth0`) is not part of what a certificate names.
        return try TLSSession(context: context, serverName: tls.serverName ?? String(host.prefix { $0 != "%" }))
    }

    func hiredisContextDidStartTLSHandshake(_ handshaking: HiredisContext) {
        guard handshaking === context else { return }
        run(machine.tlsHandshakeStarted(now: .now))
    }

    func hiredisContextDidConnect(_ connected: HiredisContext) {
        guard connected === context else { return }
        run(machine.socketConnected(now: .now))
    }

    /// AUTH, SELECT and CLIENT SETNAME as configured, then PING: pipelined in one write.
    private func write(_ handshake: Handshake) {
        guard let context else { return }
        for step in handshake.steps {
            let arguments: [RedisArgument]
            switch step {
            case .auth:
                arguments = ["AUTH"] + (configuration.username.map { [RedisArgument($0)] } ?? [])
                    + [RedisArgument(configuration.password ?? "")]
            case .select(let database): arguments = ["SELECT", RedisArgument(database)]
            case .setName(let name): arguments = ["CLIENT", "SETNAME", RedisArgument(name)]
            case .ping: arguments = ["PING"]
            }
            RESP.encode(arguments).withUnsafeBytes { context.append($0) }
        }
        context.flush()
    }

    private func becameReady(downtime: Duration?) {
        lastRead = .now
        if let currentTLSContext { lastGoodTLSContext = currentTLSContext }
        let date = Date()
        if let downtime {
            logger.info("reconnected", metadata: ["redis.endpoint": "\(configuration)", "redis.downtime": "\(downtime)"])
            events.send(.reconnected(at: date, downtime: downtime))
            pushHandler?.connectionRestored(at: date, downtime: downtime)
        } else {
            logger.debug("connected", metadata: ["redis.endpoint": "\(configuration)"])
            events.send(.connected(at: date))
            connectWaiter?.succeed(())
            connectWaiter = nil
            connectCompletion.take()?()
        }
        let waiters = readyWaiters
        readyWaiters = []
        for waiter in waiters { waiter.succeed(()) }
        drainInbox()
    }

    /// Resumes `waiter` once the connection is ready (at once if it is); fails it if the connection closes for good.
    func whenReady(_ waiter: Pending<Void>) {
        loop.assertInLoop()
        if machine.isReady {
            waiter.succeed(())
        } else if machine.isClosed || machine.isClosing {
            waiter.fail(inbox.closedError ?? RedisError(.connectionClosed, "the connection is closed"))
        } else {
            readyWaiters.removeAll { $0.isFinished }  // those that gave up (cancelled) do not pile up
            readyWaiters.append(waiter)
        }
    }

    // MARK: Commands (loop)

    private func drainInbox() {
        loop.assertInLoop()
        var submissions: [Submission] = []
        swap(&submissions, &spareSubmissions)  // moved, not copied: the inbox gets unique storage
        let closedError = inbox.take(into: &submissions, releasing: queue.takeReleased())
        defer {
            submissions.removeAll(keepingCapacity: true)
            spareSubmissions = submissions
        }
        guard !submissions.isEmpty else { return }
        guard machine.acceptsCommands, let context else {
            let error = closedError ?? RedisError(
                .connectionClosed,
                "not connected: reconnecting" + (machine.currentError.map { " after: \($0.message)" } ?? ""))
            fail(submissions[...], error)
            return
        }
        let now = ContinuousClock.now
        let deadline = now + configuration.commandTimeout
        var notWritten = CommandCost.none
        var room = Self.outputHighWater - context.outputLength  // asked once: hiredis only grows while we append
        for (index, submission) in submissions.enumerated() {
            if submission.request.isFinished {  // cancelled before writing: not sent
                notWritten.commands += submission.commands
                notWritten.bytes += submission.bytes.count
                continue
            }
            // Buffering can fail (out of memory) and close the context at once: then nothing more may be queued for
            // it, or the next connection's replies would be matched to these.
            guard output(submission.bytes, to: context, room: &room) else {
                inbox.release(notWritten)
                fail(submissions[index...], RedisError(.connectionClosed, "the connection closed while commands were being written"))
                return
            }
            let slotDeadline = submission.timeout.map { now + $0 } ?? deadline
            for part in 0..<submission.commands {
                // The bytes count against the bound until the last reply of the submission arrives.
                let bytes = part == submission.commands - 1 ? submission.bytes.count : 0
                queue.append(
                    .request(submission.request), deadline: slotDeadline, writtenAt: now,
                    cost: CommandCost(commands: 1, bytes: bytes))
            }
        }
        inbox.release(notWritten)
        flushOutput(context)
        armTimeoutTimer()
    }

    /// Hands `bytes` to hiredis, or queues them behind the bytes already waiting; `room` is what hiredis's buffer may
    /// still take. Returns `false` when the context closed meanwhile (hiredis could not buffer them).
    private func output(_ bytes: [UInt8], to context: HiredisContext, room: inout Int) -> Bool {
        if backlog.isEmpty, bytes.count <= room {
            bytes.withUnsafeBytes { context.append($0) }
            room -= bytes.count
            return self.context === context && context.isOpen
        }
        backlog.append(bytes[...])
        defer { room = 0 }  // from now on everything waits behind the backlog
        return feed(context)
    }

    /// Moves waiting bytes into hiredis's output buffer while it is under the high-water mark.
    private func feed(_ context: HiredisContext) -> Bool {
        while var chunk = backlog.first {
            let room = Self.outputHighWater - context.outputLength
            guard room > 0 else { return true }
            let piece = chunk.prefix(room)
            piece.withUnsafeBytes { context.append($0) }
            // `isOpen` too: inside a hiredis call a close is reported only when the call returns.
            guard self.context === context, context.isOpen else { return false }
            chunk = chunk.dropFirst(piece.count)
            if chunk.isEmpty { backlog.removeFirst() } else { backlog[backlog.startIndex] = chunk }
        }
        return true
    }

    /// Writes what hiredis holds, refilling it from the backlog for as long as the socket takes everything at once;
    /// when it does not, hiredis waits for it to be writable and ``hiredisContextDidWrite(_:)`` goes on.
    private func flushOutput(_ context: HiredisContext) {
        while true {
            context.flush()
            guard self.context === context, !backlog.isEmpty, context.outputLength == 0, feed(context) else { return }
        }
    }

    func hiredisContextDidWrite(_ writing: HiredisContext) {
        guard writing === context, !backlog.isEmpty else { return }
        // A buffer the write left non-empty keeps hiredis waiting for writability: topping it up is enough. An empty
        // one no longer does, so the refill must be written now.
        let drained = writing.outputLength == 0
        guard feed(writing), drained else { return }
        flushOutput(writing)
    }

    /// Fails submissions that were never written, and gives their cost back.
    private func fail(_ submissions: ArraySlice<Submission>, _ error: RedisError) {
        var cost = CommandCost.none
        for submission in submissions {
            cost.commands += submission.commands
            cost.bytes += submission.bytes.count
            submission.fail(error)
        }
        inbox.release(cost)
    }

    private static func acknowledgement(_ waiter: Waiter) -> Acknowledgement? {
        if case .ownCommand(_, let expects) = waiter { return expects }
        return nil
    }

    func hiredisContext(_ receiving: HiredisContext, didReceive reply: RedisValue) {
        guard receiving === context else { return }
        if machine.isHandshaking {
            run(machine.handshakeReply(reply, now: .now))
            return
        }
        if let pushHandler, pushHandler.handlePush(reply, awaited: queue.peek().flatMap(Self.acknowledgement)) {
            return
        }
        switch queue.popOwner() {
        case .waiter(.request(let request)):
            request.deliver(reply)
        case .waiter(.ownCommand(let handler, _)):
            if case .error(let message) = reply {
                handler(.failure(RedisError.server(message)))
            } else {
                handler(.success(reply))
            }
        case .abandoned:
            logger.trace("discarded the late reply of a timed-out or cancelled command")
        case .none:
            // Unsolicited: an error here is the server's reason for closing (e.g. max clients reached). The close
            // reaches the machine as the socket's own.
            if case .error(let message) = reply {
                receiving.close(cause: RedisError.server(message))
            } else {
                receiving.close(cause: RedisError(.protocolError, "unexpected reply from the server: \(reply.shape)"))
            }
        }
        if machine.isClosing && queue.liveCount == 0 { run(machine.drained()) }
    }

    func hiredisContext(_ receiving: HiredisContext, didReceivePush push: RawPush) {
        pushHandler?.handleMessage(push)
    }

    func hiredisContextDidFinishReading(_ reading: HiredisContext) {
        lastRead = .now
        pushHandler?.flush()
        // Give answered work back to the bound. The next write does it anyway (one lock for both), so here only when
        // the connection went idle or enough has piled up to matter: the bound then errs early by 1/16 at most.
        if queue.isEmpty || queue.releasedSoFar.commands >= releaseBatch.commands
            || queue.releasedSoFar.bytes >= releaseBatch.bytes
        {
            inbox.release(queue.takeReleased())
        }
    }


    /// Writes a command the package sends for itself; `handler` gets its reply, or the error that ended the
    /// connection. Loop only.
    func sendInternal(
        _ arguments: [RedisArgument],
        expects acknowledgement: Acknowledgement? = nil,
        timeout: Duration? = nil,
        isProbe: Bool = false,
        handler: @escaping (Result<RedisValue, RedisError>) -> Void
    ) {
        loop.assertInLoop()
        guard machine.acceptsCommands, let context else {
            handler(.failure(inbox.closedError ?? RedisError(.connectionClosed, "not connected")))
            return
        }
        // Through the backlog like everything else: a command that overtook waiting bytes would get their replies.
        var room = Self.outputHighWater - context.outputLength
        guard output(RESP.encode(arguments), to: context, room: &room) else {
            handler(.failure(RedisError(.connectionClosed, "the connection closed while a command was being written")))
            return
        }
        let now = ContinuousClock.now
        if isProbe {
            queue.appendProbe(.ownCommand(handler, expects: acknowledgement), writtenAt: now)
        } else {
            queue.append(
                .ownCommand(handler, expects: acknowledgement),
                deadline: now + (timeout ?? configuration.commandTimeout), writtenAt: now)
        }
        flushOutput(context)
        armTimeoutTimer()
    }

    /// Writes commands the package sends for itself, encoded back to back in `bytes`, that get `replies` replies in
    /// all (`SSUBSCRIBE a b` gets one per channel): `handler` gets each, with its index, or the error that ended the
    /// connection. Loop only.
    func sendInternal(
        encoded bytes: [UInt8], replies: Int, handler: @escaping (Int, Result<RedisValue, RedisError>) -> Void
    ) {
        loop.assertInLoop()
        guard machine.acceptsCommands, let context else {
            let error = inbox.closedError ?? RedisError(.connectionClosed, "not connected")
            for index in 0..<replies { handler(index, .failure(error)) }
            return
        }
        var room = Self.outputHighWater - context.outputLength
        guard output(bytes, to: context, room: &room) else {
            let error = RedisError(.connectionClosed, "the connection closed while a command was being written")
            for index in 0..<replies { handler(index, .failure(error)) }
            return
        }
        let now = ContinuousClock.now
        for index in 0..<replies {
            queue.append(.ownCommand({ handler(index, $0) }, expects: nil), deadline: now + configuration.commandTimeout, writtenAt: now)
        }
        flushOutput(context)
        armTimeoutTimer()
    }

    private func sendHealthPing() {
        // hiredis never sees the PING (replies are matched here), so the PONG of a subscribed connection
        // (`["pong", ""]`) is fine on every hiredis version. A probe: no deadline of its own, the health check judges
        // the silence, and its PONG is awaited however late (a slow command read with it holds it back).
        sendInternal(["PING"], isProbe: true) { [self] result in
            if case .failure(let error) = result, error.code == .connectionClosed { return }  // gone: nothing to check
            run(machine.healthPingAnswered(now: .now))  // any reply, an error reply too, proves life
        }
    }

    /// Closes the current connection at once with `error` (then reconnects, unless closing). Loop only.
    func closeNow(_ error: RedisError) {
        loop.assertInLoop()
        context?.close(cause: error)
    }

    /// Arms the timeout timer for the next deadline, or moves it earlier (a dedicated connection's next command may
    /// have a shorter timeout than the one before).
    private func armTimeoutTimer() {
        guard let deadline = queue.nextDeadline else { return }
        if timeoutTimer != nil, let armed = timeoutTimerDeadline, armed <= deadline { return }
        timeoutTimer?.cancel()
        timeoutTimerDeadline = deadline
        timeoutTimer = loop.scheduleTimer(at: deadline) { [self] in
            timeoutTimer = nil
            timeoutTimerDeadline = nil
            expireTimeouts()
        }
    }

    private func cancelTimeoutTimer() {
        timeoutTimer?.cancel()
        timeoutTimer = nil
        timeoutTimerDeadline = nil
    }

    private func expireTimeouts() {
        let now = ContinuousClock.now
        // First the question whether the server is silent: then the overdue commands fail with the others, as
        // connectionClosed (which PublishRetry sends again), not as timeouts on a connection about to be replaced.
        if let writtenAt = queue.newestOverdue(now: now) {
            run(machine.commandOverdue(writtenAt: writtenAt, lastRead: lastRead, now: now))
            guard machine.acceptsCommands else { return }
        }
        for (waiter, allowed) in queue.expire(now: now) {
            let error = RedisError(.timeout, "no reply within its timeout of \(allowed)")
            switch waiter {
            case .request(let request): request.fail(error)
            case .ownCommand(let handler, _): handler(.failure(error))
            }
        }
        if machine.isClosing && queue.liveCount == 0 { run(machine.drained()) }
        armTimeoutTimer()
    }

    // MARK: Losing the connection (loop)

    func hiredisContext(_ closed: HiredisContext, didCloseWith error: RedisError) {
        guard closed === context else { return }  // one we detached and closed ourselves
        context = nil
        run(machine.socketClosed(error, now: .now))
    }

    private func connectionLost(_ error: RedisError) {
        cancelTimeoutTimer()
        logger.notice("connection lost", metadata: ["redis.endpoint": "\(configuration)", "error": "\(error)"])
        let date = Date()
        events.send(.disconnected(at: date, cause: error))
        // Commands in flight may or may not have run: they fail now, and are not sent again (``PublishRetry`` may,
        // on ``RedisError/Code/connectionClosed``).
        let lost = RedisError(.connectionClosed, "connection lost: \(error.message)")
        for waiter in queue.removeAll() {
            switch waiter {
            case .request(let request): request.fail(lost)
            case .ownCommand(let handler, _): handler(.failure(lost))
            }
        }
        inbox.release(queue.takeReleased())
        pushHandler?.connectionLost(error, at: date)
    }

    // MARK: Closing (loop)

    private func beginClose(_ completion: (@Sendable () -> Void)?, force: Bool) {
        if let completion { closeWaiters.append(completion) }
        if machine.isClosed {
            runCloseWaiters()
            return
        }
        if force {
            run(machine.forceClose())
            return
        }
        if machine.acceptsCommands { drainInbox() }  // what was submitted before close() is in flight too
        run(machine.closeRequested(drained: queue.liveCount == 0, now: .now))
    }

    /// The end: `nil` for `close()`, else the error that ended it. Fails everything still waiting.
    private func finish(_ error: RedisError?) {
        cancelTimeoutTimer()
        let failure = error ?? RedisError(.connectionClosed, "the connection was closed by close()")
        let leftovers = inbox.close(failure)
        let laterError = inbox.closedError ?? failure
        let closed = failure.code == .connectionClosed ? failure : RedisError(.connectionClosed, failure.message)
        for waiter in queue.removeAll() {
            switch waiter {
            case .request(let request): request.fail(closed)
            case .ownCommand(let handler, _): handler(.failure(closed))
            }
        }
        inbox.release(queue.takeReleased())
        for submission in leftovers { submission.fail(laterError) }
        connectWaiter?.fail(failure)
        connectWaiter = nil
        connectCompletion = nil
        let waiters = readyWaiters
        readyWaiters = []
        for waiter in waiters { waiter.fail(failure) }
        pushHandler?.connectionClosed(error)
        pushHandler = nil
        if machine.hasConnected {
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

    // MARK: Introspection (tests)

    /// Callers waiting for the connection to be ready again; loop only.
    var readyWaiterCount: Int {
        loop.assertInLoop()
        return readyWaiters.count
    }

    /// Bytes in hiredis's output buffer and in the backlog behind it; loop only.
    var bufferedOutput: (hiredis: Int, backlog: Int) {
        loop.assertInLoop()
        return (context?.outputLength ?? 0, backlog.reduce(0) { $0 + $1.count })
    }

    /// TCP keepalive of the current socket; loop only.
    var keepAlive: (enabled: Bool, idleSeconds: Int32)? {
        loop.assertInLoop()
        return context?.keepAlive
    }
}
