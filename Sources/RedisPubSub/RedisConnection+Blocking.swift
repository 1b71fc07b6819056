extension RedisConnection {
    /// Sends a command that may block (`BLPOP`, `BRPOP`, `BLMOVE`, `BLMPOP`, `BZPOPMIN`, `BZPOPMAX`, `BZMPOP`,
    /// `BRPOPLPUSH`, `XREAD`/`XREADGROUP` with `BLOCK`, `WAIT`, `WAITAOF`) on a connection of its own, so it delays
    /// no other caller, and waits as long as the command's own timeout allows plus
    /// ``RedisConfiguration/commandTimeout`` (a timeout of 0 waits for as long as it takes).
    ///
    /// ```swift
    /// let job = try await connection.sendBlocking("BLPOP", "jobs", 30)   // .null after 30 s without a job
    /// ```
    ///
    /// Each concurrent call has its own connection, with the same endpoint, credentials, database and client name; a
    /// few idle ones are kept for later calls. Such a connection has no health check (a PING would wait behind the
    /// command) and never reconnects: a lost one fails its call with ``RedisError/Code/connectionClosed``. TCP
    /// keepalive notices a server that vanished. Cancelling the task ends the call at once and closes its connection
    /// (the server stops blocking for it); ``close()`` ends every call in progress.
    ///
    /// Any other command works too, on a dedicated connection.
    ///
    /// - Throws: as ``send(_:_:)``, and ``RedisError/Code/timeout`` when no reply came within the command's own
    ///   timeout plus the command timeout.
    @discardableResult
    public func sendBlocking<each Argument: RedisArgumentConvertible>(
        _ command: String,
        _ arguments: repeat each Argument
    ) async throws(RedisError) -> RedisValue {
        try await sendBlocking(Self.command(command, repeat each arguments))
    }

    /// Sends a blocking command, given as an array whose first element is the command name; see
    /// ``sendBlocking(_:_:)``.
    @discardableResult
    public func sendBlocking(_ command: [RedisArgument]) async throws(RedisError) -> RedisValue {
        let timeout: Duration
        switch try CommandRules.use(of: command) {
        case .ordinary: timeout = configuration.commandTimeout
        case .blocking(let limit?): timeout = limit + configuration.commandTimeout
        case .blocking(nil): timeout = .seconds(Int64(Int32.max))  // as long as it takes: about 68 years
        }
        return try await dedicated.send(encoded: RESP.encode(command), timeout: timeout)
    }
}
