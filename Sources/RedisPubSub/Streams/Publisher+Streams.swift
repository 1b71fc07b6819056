#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// Appending to Redis Streams: entries the server keeps until trimmed, for consumer groups and other readers.
extension Publisher {
    /// The entry field that holds an appended message, so that any client can read it (`XRANGE s - +` shows
    /// `payload`).
    public static let payloadField: RedisName = "payload"

    /// Appends `message` to `stream` (`XADD stream * payload <message>`), creating the stream if needed, and returns
    /// the entry's ID.
    ///
    /// ```swift
    /// let id = try await publisher.append("order 42 paid", to: "orders", trim: .maxLength(100_000))
    /// ```
    ///
    /// An append that returns is on the server, in its memory. With `appendonly yes` and `appendfsync always` it was
    /// also written and synced to the append-only file before the reply, so it survives a kill of the server and a
    /// crash of the machine (with the default `appendfsync everysec`, the server may reply before writing, and the
    /// last second or two can be lost). An append that throws ``RedisError/Code/connectionClosed`` or
    /// ``RedisError/Code/timeout`` may or may not have been applied; with ``PublishRetry/whileReconnecting(upTo:)``,
    /// one that failed with ``RedisError/Code/connectionClosed`` is sent again, so the stream may then hold it twice.
    ///
    /// - Parameters:
    ///   - message: the entry's `payload` field, byte for byte.
    ///   - stream: the stream's key.
    ///   - trim: trims the stream in the same command; when `nil`, the stream's trim set with
    ///     ``setTrim(_:for:)``, if any.
    /// - Throws: ``RedisError``: ``RedisError/Code/serverError`` when the key holds something else than a stream
    ///   (`WRONGTYPE`), else as ``publish(_:to:)``.
    @discardableResult
    public func append(
        _ message: some RedisPayload, to stream: some RedisNameConvertible, trim: StreamTrim? = nil
    ) async throws(RedisError) -> StreamEntryID {
        try await appendOne(message.redisArgument, stream.redisArgument, trim: trim, creating: true)!
    }

    /// Appends `value` encoded as JSON (with `encoder`, else the publisher's ``encoder``); see ``append(_:to:trim:)``.
    ///
    /// - Throws: ``RedisError/Code/invalidArgument`` when the value does not encode (nothing is sent), else as
    ///   ``append(_:to:trim:)``.
    @discardableResult
    public func append(
        json value: some Encodable, to stream: some RedisNameConvertible, trim: StreamTrim? = nil,
        encoder: JSONEncoder? = nil
    ) async throws(RedisError) -> StreamEntryID {
        try await appendOne(json(value, encoder), stream.redisArgument, trim: trim, creating: true)!
    }

    /// Appends `message` only if `stream` exists (`XADD ... NOMKSTREAM`): a stream that was deleted is not created
    /// again by a late producer.
    ///
    /// - Returns: the entry's ID, or `nil` when the stream does not exist (nothing was appended).
    /// - Throws: as ``append(_:to:trim:)``.
    @discardableResult
    public func appendIfExists(
        _ message: some RedisPayload, to stream: some RedisNameConvertible, trim: StreamTrim? = nil
    ) async throws(RedisError) -> StreamEntryID? {
        try await appendOne(message.redisArgument, stream.redisArgument, trim: trim, creating: false)
    }

    /// Appends many messages to one stream in one write, waiting once: the fastest way to append a burst. Each is
    /// its own entry, in this order; the trim runs with each.
    ///
    /// With ``PublishRetry/whileReconnecting(upTo:)``, a batch cut off by a disconnect is sent again in full: the
    /// entries already appended are then there twice.
    ///
    /// - Returns: the entries' IDs, in order.
    /// - Throws: as ``append(_:to:trim:)``; when one append fails, the call throws its error once every reply is in
    ///   (the others were appended).
    @discardableResult
    public func append<Messages: Sequence>(
        contentsOf messages: Messages, to stream: some RedisNameConvertible, trim: StreamTrim? = nil
    ) async throws(RedisError) -> [StreamEntryID] where Messages.Element: RedisPayload {
        let stream = stream.redisArgument
        let prefix = prefix(stream, trim: trim, creating: true)
        var bytes: [UInt8] = []
        var count = 0
        for message in messages {
            RESP.append(prefix, message.redisArgument, to: &bytes)
            count += 1
        }
        let encoded = bytes
        let replies = try await retryingIfConfigured { () async throws(RedisError) in
            try await connection.sendBatch(encoded: encoded, commands: count)
        }
        var ids: [StreamEntryID] = []
        ids.reserveCapacity(count)
        for reply in replies {
            guard let bytes = reply.bulkBytes, let id = StreamEntryID(bytes: bytes) else {
                throw RedisConnection.unexpected("XADD", reply)
            }
            ids.append(id)
        }
        return ids
    }

    /// Sets how every append to `stream` without a trim of its own trims it; `nil` removes it.
    ///
    /// ```swift
    /// publisher.setTrim(.maxLength(10_000), for: "orders")
    /// ```
    public func setTrim(_ trim: StreamTrim?, for stream: some RedisNameConvertible) {
        let name = RedisName(argument: stream.redisArgument)
        streamTrims.withLock { $0[name] = trim }
    }

    /// `body`, run again after a reconnect as ``retry`` says.
    private func retryingIfConfigured<Result>(
        _ body: () async throws(RedisError) -> Result
    ) async throws(RedisError) -> Result {
        guard case .whileReconnecting(let limit) = retry.base else { return try await body() }
        return try await retrying(upTo: limit, body)
    }

    /// `XADD stream [NOMKSTREAM] [trim] * payload`, without the payload.
    private func prefix(_ stream: RedisArgument, trim: StreamTrim?, creating: Bool) -> [RedisArgument] {
        var command: [RedisArgument] = ["XADD", stream]
        if !creating { command.append("NOMKSTREAM") }
        let trim = trim ?? streamTrims.withLock { $0.isEmpty ? nil : $0[RedisName(argument: stream)] }
        if let trim { command += trim.arguments }
        command += ["*", Self.payloadField.argument]
        return command
    }

    private func appendOne(
        _ message: RedisArgument, _ stream: RedisArgument, trim: StreamTrim?, creating: Bool
    ) async throws(RedisError) -> StreamEntryID? {
        var encoded: [UInt8] = []
        RESP.append(prefix(stream, trim: trim, creating: creating), message, to: &encoded)
        let bytes = encoded
        let reply = try await retryingIfConfigured { () async throws(RedisError) in
            try await connection.sendUninterruptible(encoded: bytes)
        }
        if reply.isNull, !creating { return nil }
        guard let bytes = reply.bulkBytes, let id = StreamEntryID(bytes: bytes) else {
            throw RedisConnection.unexpected("XADD", reply)
        }
        return id
    }
}
