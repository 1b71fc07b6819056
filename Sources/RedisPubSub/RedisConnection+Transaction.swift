extension RedisConnection {
    /// Runs `commands` as one transaction: `MULTI`, the commands and `EXEC` are written as one block, so no other
    /// task's command sharing the connection can come between them, and the server runs them one after the other
    /// with nothing in between.
    ///
    /// ```swift
    /// let replies = try await connection.transaction([
    ///     ["INCR", "orders:count"],
    ///     ["LPUSH", "orders:recent", RedisArgument(orderID)],
    /// ])
    /// let count = replies[0].int
    /// ```
    ///
    /// A command that fails while running (a `WRONGTYPE`, say) does not stop the others, as in Redis: its place in
    /// the result holds ``RedisValue/error(_:)``. A command the server refuses before running anything (a wrong
    /// number of arguments, an ACL's `NOPERM`) aborts the whole transaction: nothing runs, and the call throws that
    /// command's error. Cancellation is checked when the call starts; once written, the transaction runs whatever
    /// the caller does, so the call waits for its result. If the connection is lost before the result arrives, the
    /// call throws ``RedisError/Code/connectionClosed`` and the transaction may or may not have run.
    ///
    /// - Parameter commands: each one an array whose first element is the command name; the rules of ``send(_:)``
    ///   apply to each (no nested MULTI, no SUBSCRIBE, no blocking command).
    /// - Returns: one reply per command, in order.
    /// - Throws: ``RedisError`` (the refused command's error, ``RedisError/Code/connectionClosed``,
    ///   ``RedisError/Code/timeout``, ...), ``RedisError/Code/cancelled`` before anything was written.
    public func transaction(_ commands: [[RedisArgument]]) async throws(RedisError) -> [RedisValue] {
        guard !commands.isEmpty else { return [] }
        for command in commands { try CommandRules.checkShared(command) }
        var bytes = RESP.encode(["MULTI"])
        for command in commands { RESP.append(command, to: &bytes) }
        RESP.append(["EXEC"], to: &bytes)
        let replies = try await sendBatch(encoded: bytes, commands: commands.count + 2, keepsErrorReplies: true)
        if case .error(let message) = replies[0] {
            // The server refused MULTI itself (an ACL without +multi): the commands then ran one by one.
            throw RedisError(
                RedisError.server(message).code,
                "MULTI was refused (\(message)), so the commands ran one by one, outside a transaction")
        }
        switch replies[replies.count - 1] {
        case .array(let results) where results.count == commands.count:
            return results
        case .error(let message):
            // EXECABORT: name the command the server refused while queueing.
            for (index, reply) in replies[1...commands.count].enumerated() {
                if case .error(let reason) = reply {
                    let refused = RedisError.server(reason)
                    throw RedisError(
                        refused.code, "the transaction was aborted: its command \(index + 1) was refused: \(reason)")
                }
            }
            throw RedisError.server(message)
        case .null:
            throw RedisError(.serverError, "the server aborted the transaction")
        case let other:
            throw RedisError(.protocolError, "unexpected reply to EXEC: \(other.shape)")
        }
    }
}
