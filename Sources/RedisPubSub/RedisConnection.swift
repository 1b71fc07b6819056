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
/// A lost connection is re-established per ``RedisConfiguration/reconnect`` (commands in flight at that moment fail
/// with ``RedisError/Code/connectionClosed``; ``events`` reports the changes). A connection that is released without
/// ``close()`` closes itself.
public final class RedisConnection: Sendable {
    let core: ConnectionCore

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
    }

    deinit {
        core.close()
    }

    /// Connects, authenticates, selects the database and names the client as configured, then returns.
    ///
    /// - Parameters:
    ///   - configuration: where and how to connect; ``RedisConfiguration/fromEnvironment()`` reads `REDIS_URL`.
    ///   - logger: where the connection logs its connects and disconnects (at `debug`); nothing by default.
    /// - Throws: ``RedisError`` (``RedisError/Code/connectionRefused``, ``RedisError/Code/hostUnreachable``,
    ///   ``RedisError/Code/nameResolutionFailed``, ``RedisError/Code/timeout``,
    ///   ``RedisError/Code/authenticationFailed``, ``RedisError/Code/invalidConfiguration``, ...), or
    ///   `CancellationError` when the task is cancelled.
    public static func connect(
        to configuration: RedisConfiguration,
        logger: Logger = RedisConnection.disabledLogger
    ) async throws -> RedisConnection {
        try configuration.validate()
        let core = ConnectionCore(configuration: configuration, logger: logger, loop: .shared)
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
    ///   ``RedisError/Code/connectionClosed`` when the connection is or becomes closed, and
    ///   ``RedisError/Code/invalidArgument`` for the commands ``Subscriber`` owns (SUBSCRIBE and the like) or MONITOR;
    ///   `CancellationError` when the task is cancelled (a late reply is discarded).
    @discardableResult
    public func send<each Argument: RedisArgumentConvertible>(
        _ command: String,
        _ arguments: repeat each Argument
    ) async throws -> RedisValue {
        var list = [RedisArgument(command)]
        for argument in repeat each arguments {
            list.append(argument.redisArgument)
        }
        return try await send(list)
    }

    /// Sends one command, given as an array whose first element is the command name.
    ///
    /// - Throws: as ``send(_:_:)``.
    @discardableResult
    public func send(_ command: [RedisArgument]) async throws -> RedisValue {
        try Self.checkAllowed(command)
        return try await send(encoded: RESP.encode(command))
    }

    func send(encoded bytes: [UInt8]) async throws -> RedisValue {
        let pending = Pending<RedisValue>()
        return try await pending.wait { core.submit(.init(bytes: bytes, request: .cancellable(pending))) }
    }

    /// Sends a command whose caller waits for the reply even when its task is cancelled meanwhile (cancellation is
    /// checked before sending). For PUBLISH: once sent it is delivered anyway, so the caller may as well learn the
    /// count. The wait is bounded by the command timeout; it needs no `Pending` object and no cancellation handler.
    func sendUninterruptible(encoded bytes: [UInt8]) async throws -> RedisValue {
        try Task.checkCancellation()
        return try await withUnsafeThrowingContinuation { continuation in
            core.submit(.init(bytes: bytes, request: .direct(continuation)))
        }
    }

    /// Sends `commands` commands encoded back to back in `bytes`, written together, and waits once for all their
    /// replies, in order; throws the first failure once every command is resolved. Interruptible only before sending,
    /// like ``sendUninterruptible(encoded:)``.
    func sendBatch(encoded bytes: [UInt8], commands: Int) async throws -> [RedisValue] {
        try Task.checkCancellation()
        guard commands > 0 else { return [] }
        return try await withUnsafeThrowingContinuation { continuation in
            let batch = ConnectionCore.Batch(count: commands, continuation: continuation)
            core.submit(.init(bytes: bytes, request: .batchPart(batch), commands: commands))
        }
    }

    /// Closes the connection. Commands already sent get their replies (or time out) first; commands sent later fail
    /// with ``RedisError/Code/connectionClosed``. Returns once the socket is closed. Calling it again does nothing.
    public func close() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            core.close { continuation.resume() }
        }
    }

    /// The connection's changes from now on: disconnected (with the cause), reconnecting, reconnected, closed.
    /// Each access returns a new sequence; it ends when the connection is closed for good.
    public var events: AsyncStream<ConnectionEvent> { core.events.stream() }

    /// Waits until the connection is (again) ready. Returns `false` when `deadline` passes first; throws when the
    /// connection is closed for good.
    func waitUntilConnected(before deadline: ContinuousClock.Instant) async throws -> Bool {
        let core = self.core
        return try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask {
                let waiter = Pending<Void>()
                try await waiter.wait { core.loop.execute { core.whenReady(waiter) } }
                return true
            }
            group.addTask {
                try await Task.sleep(until: deadline)
                return false
            }
            let first = try await group.next() ?? false
            group.cancelAll()
            return first
        }
    }

    /// A logger that discards everything: the default of every API that takes a `Logger`.
    public static let disabledLogger = Logger(label: "RedisPubSub", factory: { _ in SwiftLogNoOpLogHandler() })

    /// Commands that would put the connection in a mode where replies no longer match requests.
    static func checkAllowed(_ command: [RedisArgument]) throws(RedisError) {
        guard let name = command.first else {
            throw RedisError(.invalidArgument, "empty command")
        }
        // Cheap first: every reserved name is 5 to 12 bytes long and starts with one of these letters.
        let count = name.count
        guard (5...12).contains(count) else { return }
        let first: UInt8
        switch name.storage {
        case .string(let string): first = string.utf8.first ?? 0
        case .bytes(let bytes): first = bytes.first ?? 0
        }
        guard "CHMPRSUchmprsu".utf8.contains(first) else { return }
        let upper = String(decoding: name.bytes, as: UTF8.self).uppercased()
        switch upper {
        case "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE":
            throw RedisError(.invalidArgument, "\(upper) is not available through send(_:): use Subscriber, which routes messages")
        case "MONITOR":
            throw RedisError(.invalidArgument, "MONITOR is not supported: it turns the connection into a stream")
        case "HELLO" where command.count > 1 && command[1].bytes != Array("2".utf8):
            throw RedisError(.invalidArgument, "only RESP2 is supported (HELLO 2)")
        case "CLIENT" where command.count > 1 && String(decoding: command[1].bytes, as: UTF8.self).uppercased() == "REPLY":
            throw RedisError(.invalidArgument, "CLIENT REPLY is not supported: every command here expects its reply")
        case "RESET":
            throw RedisError(.invalidArgument, "RESET is not supported: it would undo the connection's AUTH, SELECT and name")
        default:
            return
        }
    }
}
