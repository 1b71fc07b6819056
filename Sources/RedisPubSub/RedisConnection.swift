public import Logging

/// A connection to a Redis server for commands: `send` any command, or use the typed helpers for PING, PUBLISH,
/// SPUBLISH and PUBSUB introspection.
///
/// Share one connection between as many tasks as you like: commands submitted concurrently are written together
/// (pipelined) and each caller gets its own reply. All hiredis work happens on the package's event-loop thread;
/// calls never block the caller's thread.
///
/// ```swift
/// let connection = try await RedisConnection.connect(to: .fromEnvironment())
/// try await connection.send("SET", "greeting", "hello")
/// let value = try await connection.send("GET", "greeting")   // .bulkString(Array("hello".utf8))
/// await connection.close()
/// ```
///
/// The connection is supervised: an idle one is checked with a PING (``RedisConfiguration/healthCheckInterval``), and
/// one whose server stopped answering is declared dead and replaced. A lost connection is re-established per
/// ``RedisConfiguration/reconnect`` (commands in flight at that moment fail with
/// ``RedisError/Code/connectionClosed``; ``events()`` reports the changes). A connection that is released without
/// ``close()`` closes itself.
public final class RedisConnection: Sendable {
    let core: ConnectionCore
    /// Connections of their own for ``sendBlocking(_:)``, opened on demand.
    let dedicated: DedicatedConnections

    /// The configuration this connection was made with.
    public var configuration: RedisConfiguration { core.configuration }

    /// The package's event-loop thread as a task executor, for tasks that issue many commands or consume many
    /// messages: `Task(executorPreference: connection.taskExecutor) { ... }` or
    /// `withTaskExecutorPreference(connection.taskExecutor) { ... }`.
    ///
    /// Such a task runs between the loop's reads and writes. A reply resumes it without waking another thread, and
    /// the command it sends next is written in the same turn, so a busy publisher spends far less time in the
    /// scheduler. Every connection shares the one loop thread: code that blocks it (sleeps, locks held for long,
    /// heavy computation) delays all Redis I/O of the process, and code that blocks it waiting for a Redis result
    /// (a semaphore, say) waits forever. Keep such work on the default executor.
    public var taskExecutor: any TaskExecutor { core.loop }

    private init(core: ConnectionCore) {
        self.core = core
        self.dedicated = DedicatedConnections(configuration: core.configuration, logger: core.logger, loop: core.loop)
    }

    deinit {
        core.close()
        dedicated.closeAll()
    }

    /// Connects, authenticates, selects the database and names the client as configured, then returns.
    ///
    /// - Parameters:
    ///   - configuration: where and how to connect; ``RedisConfiguration/fromEnvironment()`` reads `REDIS_URL`.
    ///   - logger: where the connection logs its connects and disconnects (at `debug`); nothing by default.
    /// - Throws: ``RedisError`` (``RedisError/Code/connectionRefused``, ``RedisError/Code/hostUnreachable``,
    ///   ``RedisError/Code/nameResolutionFailed``, ``RedisError/Code/timeout``,
    ///   ``RedisError/Code/authenticationFailed``, ``RedisError/Code/invalidConfiguration``, ...), or
    ///   ``RedisError/Code/cancelled`` when the task is cancelled.
    public static func connect(
        to configuration: RedisConfiguration,
        logger: Logger = RedisConnection.disabledLogger
    ) async throws(RedisError) -> RedisConnection {
        try await connect(to: configuration, logger: logger, on: .shared)
    }

    /// Connects on a loop of the caller's choosing (tests that block a loop on purpose use their own).
    static func connect(
        to configuration: RedisConfiguration, logger: Logger, on loop: EventLoop
    ) async throws(RedisError) -> RedisConnection {
        try configuration.validate()
        let core = ConnectionCore(configuration: configuration, logger: logger, loop: loop)
        let connection = RedisConnection(core: core)  // its deinit closes the core if connecting fails
        let waiter = Pending<Void>()
        try await waiter.wait {
            core.loop.execute { core.connect(waiter) }
        }
        return connection
    }

    /// Sends one command and returns its reply. Arguments are sent byte for byte.
    ///
    /// Each argument may be a `String`, `[UInt8]`, `Data`, `Int` or ``RedisArgument``:
    ///
    /// ```swift
    /// try await connection.send("SET", key, [0x00, 0xFF] as [UInt8])
    /// try await connection.send("EXPIRE", key, 60)
    /// ```
    ///
    /// - Throws: ``RedisError`` with ``RedisError/Code/serverError`` (the server's message) for an error reply,
    ///   ``RedisError/Code/timeout`` after ``RedisConfiguration/commandTimeout``,
    ///   ``RedisError/Code/connectionClosed`` when the connection is or becomes closed,
    ///   ``RedisError/Code/overloaded`` when too much is waiting for the server already, and
    ///   ``RedisError/Code/invalidArgument`` for commands a shared, reconnecting connection cannot take, each with
    ///   what to use instead: SUBSCRIBE and the like (``Subscriber``), MULTI/EXEC (``transaction(_:)``), blocking
    ///   commands such as BLPOP (``sendBlocking(_:)``), SELECT, AUTH and CLIENT SETNAME (``RedisConfiguration``),
    ///   WATCH, HELLO, MONITOR, RESET; ``RedisError/Code/cancelled`` when the task is cancelled (a late reply is discarded).
    @discardableResult
    public func send<each Argument: RedisArgumentConvertible>(
        _ command: String,
        _ arguments: repeat each Argument
    ) async throws(RedisError) -> RedisValue {
        try await send(Self.command(command, repeat each arguments))
    }

    /// The command name and its arguments as one array.
    static func command<each Argument: RedisArgumentConvertible>(
        _ name: String,
        _ arguments: repeat each Argument
    ) -> [RedisArgument] {
        var list = [RedisArgument(name)]
        for argument in repeat each arguments {
            list.append(argument.redisArgument)
        }
        return list
    }

    /// Sends one command, given as an array whose first element is the command name.
    ///
    /// - Throws: as ``send(_:_:)``.
    @discardableResult
    public func send(_ command: [RedisArgument]) async throws(RedisError) -> RedisValue {
        try CommandRules.checkShared(command)
        return try await send(encoded: RESP.encode(command))
    }

    func send(encoded bytes: [UInt8]) async throws(RedisError) -> RedisValue {
        let pending = Pending<RedisValue>()
        return try await pending.wait { core.submit(Submission(bytes: bytes, request: .cancellable(pending))) }
    }

    /// Sends a command whose caller waits for the reply even when its task is cancelled meanwhile (cancellation is
    /// checked before sending). For PUBLISH: once sent it is delivered anyway, so the caller may as well learn the
    /// count. The wait is bounded by the command timeout; it needs no `Pending` object and no cancellation handler.
    func sendUninterruptible(encoded bytes: [UInt8]) async throws(RedisError) -> RedisValue {
        try RedisError.checkCancellation()
        return try await withUnsafeContinuation { continuation in
            core.submit(Submission(bytes: bytes, request: .direct(continuation)))
        }.get()
    }

    /// Sends `commands` commands encoded back to back in `bytes`, written together, and waits once for all their
    /// replies, in order; throws the first failure once every command is resolved. Interruptible only before sending,
    /// like ``sendUninterruptible(encoded:)``.
    func sendBatch(
        encoded bytes: [UInt8], commands: Int, keepsErrorReplies: Bool = false
    ) async throws(RedisError) -> [RedisValue] {
        try RedisError.checkCancellation()
        guard commands > 0 else { return [] }
        return try await withUnsafeContinuation { continuation in
            let batch = Batch(count: commands, keepsErrorReplies: keepsErrorReplies, continuation: continuation)
            core.submit(Submission(bytes: bytes, request: .batchPart(batch), commands: commands))
        }.get()
    }

    /// Closes the connection. Commands already sent get their replies first, for at most
    /// ``RedisConfiguration/commandTimeout`` (or until the health check finds the server dead); commands sent later
    /// fail with ``RedisError/Code/connectionClosed``. Returns once the socket is closed. Calling it again does
    /// nothing more.
    ///
    /// Cancelling the calling task closes at once: the commands still in flight fail with
    /// ``RedisError/Code/connectionClosed``. (A service group that escalates a slow graceful shutdown to cancellation
    /// gets exactly that.)
    public func close() async {
        let core = self.core
        let dedicated = self.dedicated
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                dedicated.closeAll()
                core.close { continuation.resume() }
            }
        } onCancel: {
            core.forceClose()
        }
    }

    /// The connection's state and changes: first where it stands now (the last event so far: connected,
    /// disconnected, reconnecting, reconnected), then every change. Each call returns a new sequence; it ends when the
    /// connection is closed for good.
    public func events() -> AsyncStream<ConnectionEvent> { core.events.stream() }

    /// The error the connection closed with for good (by ``close()``, or a failure it does not retry), if it did.
    var closedError: RedisError? { core.inbox.closedError }

    /// Whether the connection is closed for good.
    var isClosedForGood: Bool { closedError != nil }

    /// Waits until the connection is (again) ready. Returns `false` when `deadline` passes first; throws when the
    /// connection is closed for good.
    func waitUntilConnected(before deadline: ContinuousClock.Instant) async throws(RedisError) -> Bool {
        let core = self.core
        return try await withTaskGroup(of: Result<Bool, RedisError>.self) { group in
            group.addTask {
                let waiter = Pending<Void>()
                do throws(RedisError) {
                    try await waiter.wait { core.loop.execute { core.whenReady(waiter) } }
                    return .success(true)
                } catch {
                    return .failure(error)
                }
            }
            group.addTask {
                do {
                    try await Task.sleep(until: deadline)
                    return .success(false)
                } catch {
                    return .failure(.cancelled)  // the caller's task was cancelled: say so, not "not connected"
                }
            }
            let first = await group.next() ?? .success(false)
            group.cancelAll()
            return first
        }.get()
    }

    /// A logger that discards everything: the default of every API that takes a `Logger`.
    public static let disabledLogger = Logger(label: "RedisPubSub", factory: { _ in SwiftLogNoOpLogHandler() })
}
