import Logging
import Synchronization

/// Receives the Pub/Sub pushes of a Subscriber connection. Loop-confined.
protocol PushHandler: AnyObject {
    /// Takes `reply` if it is a push (a message, or an unsubscribe the server decided on); returns `false` for
    /// replies to requests.
    func handlePush(_ reply: RedisValue) -> Bool
    /// The end of one read from the socket: hand what was routed to the consumers.
    func flush()
    /// The connection is gone; no more pushes will come.
    func connectionClosed(_ error: RedisError)
}

/// The event-loop half of a connection: connects (resolving, trying each address, handshaking), writes submitted
/// commands in batches, matches replies to their callers in order, times commands out, and closes.
///
/// Callers on any thread use ``submit(_:)`` and ``close(_:)``; everything else runs on ``loop``.
final class ConnectionCore: HiredisContextDelegate, @unchecked Sendable {
    // @unchecked Sendable because: `inbox` is a Mutex and `loop`, `configuration` and `logger` are immutable;
    // every other stored property is touched only on the loop thread (asserted at each entry point).

    typealias Request = Pending<RedisValue>

    enum Waiter {
        case request(Request)
        /// A step of the connect handshake; `final` is the last one (the PING).
        case handshake(command: String, final: Bool)
        /// A command the package sends for itself (subscriptions); the handler runs on the loop.
        case ownCommand((Result<RedisValue, RedisError>) -> Void)
    }

    private struct Inbox {
        var requests: [Request] = []
        var scheduled = false
        /// Set once the connection is closed or closing: later submissions fail with it at once.
        var closedError: RedisError?
    }

    private enum State {
        case idle
        /// Resolving (no context yet) or connecting to one address, with the ones left to try.
        case connecting(remaining: [HiredisContext.Address])
        case handshaking
        case ready
        /// `close()` was called: in-flight commands finish, then the context closes.
        case closing
        case closed(RedisError)
    }

    let loop: EventLoop
    let configuration: RedisConfiguration
    let logger: Logger
    private let inbox = Mutex(Inbox())

    private var state = State.idle
    private var context: HiredisContext?
    private var queue = RequestQueue<Waiter>()
    private var timeoutTimer: LoopTimer?
    private var connectTimer: LoopTimer?
    private var connectDeadline = ContinuousClock.now
    private var connectWaiter: Pending<Void>?
    private var lastConnectError: RedisError?
    private var closeWaiters: [@Sendable () -> Void] = []
    private var spareRequests: [Request] = []
    /// Set on Subscriber connections: receives Pub/Sub pushes, which are not replies to any request.
    var pushHandler: (any PushHandler)?

    init(configuration: RedisConfiguration, logger: Logger, loop: EventLoop) {
        self.configuration = configuration
        self.logger = logger
        self.loop = loop
    }

    // MARK: Any thread

    /// Queues a request for writing. The loop writes every request queued before it runs in one batch.
    func submit(_ request: Request) {
        enum Next { case fail(RedisError), schedule, none }
        let next = inbox.withLock { inbox -> Next in
            if let error = inbox.closedError { return .fail(error) }
            inbox.requests.append(request)
            if inbox.scheduled { return .none }
            inbox.scheduled = true
            return .schedule
        }
        switch next {
        case .fail(let error): request.fail(error)
        case .schedule: loop.execute { self.drainInbox() }
        case .none: break
        }
    }

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

    /// Starts connecting; `waiter` succeeds when the handshake is done.
    func connect(_ waiter: Pending<Void>) {
        loop.assertInLoop()
        guard case .idle = state else {
            waiter.fail(RedisError(.connectionClosed, "the connection is already closed"))
            return
        }
        connectWaiter = waiter
        connectDeadline = .now + configuration.connectTimeout
        connectTimer = loop.scheduleTimer(at: connectDeadline) { [self] in
            connectTimer = nil
            failConnect(RedisError(.timeout, "connecting to \(configuration) timed out after \(configuration.connectTimeout)"))
        }
        switch configuration.endpoint {
        case .unixSocket(let path):
            attempt([.unix(path: path)])
        case .tcp(let host, let port):
            if AddressResolver.isNumeric(host) {
                attempt([.tcp(ip: host, port: port)])
            } else {
                state = .connecting(remaining: [])
                AddressResolver.resolve(host: host, port: port) { result in
                    self.loop.execute { self.resolved(result) }
                }
            }
        }
    }

    private func resolved(_ result: Result<[HiredisContext.Address], RedisError>) {
        guard case .connecting = state, context == nil else { return }  // timed out or closed meanwhile
        switch result {
        case .success(let addresses): attempt(addresses)
        case .failure(let error): failConnect(error)
        }
    }

    private func attempt(_ addresses: [HiredisContext.Address]) {
        var remaining = addresses[...]
        while let address = remaining.popFirst() {
            logger.debug("connecting", metadata: ["redis.address": "\(address)"])
            do {
                context = try HiredisContext(address: address, loop: loop, delegate: self)
                state = .connecting(remaining: Array(remaining))
                return
            } catch {
                logger.debug("connect failed", metadata: ["redis.address": "\(address)", "error": "\(error)"])
                lastConnectError = error
            }
        }
        failConnect(lastConnectError ?? RedisError(.connectionRefused, "no address to connect to"))
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
            queue.append(.handshake(command: name, final: index == steps.count - 1), deadline: connectDeadline)
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
            failConnect(error)
            return
        }
        guard final else { return }
        connectTimer?.cancel()
        connectTimer = nil
        state = .ready
        logger.debug("connected", metadata: ["redis.endpoint": "\(configuration)"])
        connectWaiter?.succeed(())
        connectWaiter = nil
        drainInbox()
    }

    private func failConnect(_ error: RedisError) {
        switch state {
        case .idle, .connecting, .handshaking: break
        case .ready, .closing, .closed: return
        }
        logger.debug("connect failed", metadata: ["redis.endpoint": "\(configuration)", "error": "\(error)"])
        finish(error)
    }

    // MARK: Commands (loop)

    private func drainInbox() {
        loop.assertInLoop()
        var requests = spareRequests
        let closedError = inbox.withLock { inbox -> RedisError? in
            swap(&requests, &inbox.requests)
            inbox.scheduled = false
            return inbox.closedError
        }
        defer {
            requests.removeAll(keepingCapacity: true)
            spareRequests = requests
        }
        guard !requests.isEmpty else { return }
        guard acceptsWrites, let context else {
            // Submissions before `connect` finished cannot happen through the public API; after close they fail.
            let error = closedError ?? RedisError(.connectionClosed, "the connection is not open")
            for request in requests { request.fail(error) }
            return
        }
        let deadline = ContinuousClock.now + configuration.commandTimeout
        for request in requests where !request.isFinished {  // a request cancelled before writing is not sent
            request.bytes.withUnsafeBytes { context.append($0) }
            queue.append(.request(request), deadline: deadline)
        }
        context.flush()
        armTimeoutTimer()
    }

    private var acceptsWrites: Bool {
        switch state {
        case .ready, .closing: true
        case .idle, .connecting, .handshaking, .closed: false
        }
    }

    func hiredisContextDidReceive(_ reply: RedisValue) {
        if let pushHandler, pushHandler.handlePush(reply) {
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
        case .waiter(.ownCommand(let handler)):
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

    func hiredisContextDidFinishReading() {
        pushHandler?.flush()
    }

    /// Writes a command the package sends for itself; `handler` gets its reply, or the error that closed the
    /// connection. Loop only.
    func sendInternal(_ arguments: [RedisArgument], handler: @escaping (Result<RedisValue, RedisError>) -> Void) {
        loop.assertInLoop()
        guard acceptsWrites, let context else {
            handler(.failure(inbox.withLock { $0.closedError } ?? RedisError(.connectionClosed, "the connection is not open")))
            return
        }
        RESP.encode(arguments).withUnsafeBytes { context.append($0) }
        queue.append(.ownCommand(handler), deadline: .now + configuration.commandTimeout)
        context.flush()
        armTimeoutTimer()
    }

    /// Closes the connection at once, failing everything in flight with `error`. Loop only.
    func closeNow(_ error: RedisError) {
        loop.assertInLoop()
        if let context {
            context.close(cause: error)
        } else {
            finish(error)
        }
    }

    private func armTimeoutTimer() {
        guard timeoutTimer == nil, let deadline = queue.nextDeadline else { return }
        timeoutTimer = loop.scheduleTimer(at: deadline) { [self] in
            timeoutTimer = nil
            expireTimeouts()
        }
    }

    private func expireTimeouts() {
        for waiter in queue.expire(now: .now) {
            switch waiter {
            case .request(let request):
                request.fail(RedisError(.timeout, "no reply within the command timeout of \(configuration.commandTimeout)"))
            case .handshake(let command, _):
                failConnect(RedisError(.timeout, "\(command) got no reply within the connect timeout of \(configuration.connectTimeout)"))
                return
            case .ownCommand(let handler):
                handler(.failure(RedisError(.timeout, "no reply within the command timeout of \(configuration.commandTimeout)")))
            }
        }
        closeIfDrained()
        armTimeoutTimer()
    }

    // MARK: Closing (loop)

    private func beginClose(_ completion: (@Sendable () -> Void)?) {
        if let completion { closeWaiters.append(completion) }
        switch state {
        case .idle, .connecting, .handshaking:
            failConnect(RedisError(.connectionClosed, "the connection was closed while connecting"))
        case .ready:
            drainInbox()  // what was submitted before close() is in flight too
            state = .closing
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
            finish(RedisError(.connectionClosed, "the connection was closed by close()"))
        }
    }

    func hiredisContextDidClose(_ error: RedisError) {
        context = nil
        switch state {
        case .connecting(let remaining) where !remaining.isEmpty:
            lastConnectError = error
            attempt(remaining)
        case .connecting, .handshaking:
            failConnect(error)
        case .ready, .closing:
            logger.debug("connection closed", metadata: ["redis.endpoint": "\(configuration)", "error": "\(error)"])
            finish(error)
        case .idle, .closed:
            break
        }
    }

    /// The end: fails everything still waiting with `error` and runs the close waiters.
    private func finish(_ error: RedisError) {
        if case .closed = state { return }
        state = .closed(error)
        connectTimer?.cancel()
        connectTimer = nil
        timeoutTimer?.cancel()
        timeoutTimer = nil
        let leftovers = inbox.withLock { inbox -> (RedisError, [Request]) in
            if inbox.closedError == nil { inbox.closedError = error }
            let requests = inbox.requests
            inbox.requests = []
            return (inbox.closedError!, requests)
        }
        for waiter in queue.removeAll() {
            switch waiter {
            case .request(let request): request.fail(error)
            case .ownCommand(let handler): handler(.failure(error))
            case .handshake: break
            }
        }
        pushHandler?.connectionClosed(error)
        pushHandler = nil
        for request in leftovers.1 { request.fail(leftovers.0) }
        connectWaiter?.fail(error)
        connectWaiter = nil
        if let context {
            self.context = nil
            context.close(cause: error)  // re-enters hiredisContextDidClose, which sees `.closed`
        }
        runCloseWaiters()
    }

    private func runCloseWaiters() {
        let waiters = closeWaiters
        closeWaiters = []
        for waiter in waiters { waiter() }
    }
}
