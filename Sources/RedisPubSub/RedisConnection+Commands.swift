extension RedisConnection {
    /// `PING`: checks the connection; returns `PONG`, or `message` when one is given.
    ///
    /// - Throws: as ``RedisConnection/send(_:_:)``.
    public func ping(_ message: (any RedisPayload)? = nil) async throws(RedisError) -> String {
        let reply = try await send(message.map { ["PING", $0.redisArgument] } ?? ["PING"])
        guard let text = reply.string else { throw Self.unexpected("PING", reply) }
        return text
    }

    /// `PUBLISH`: sends `message`, byte for byte, to every subscriber of `channel`; see
    /// ``Publisher/publish(_:to:)``, which adds JSON, batches and retrying.
    ///
    /// Cancellation is checked when the call starts. A publish under way is not interrupted: once sent, the server
    /// delivers it whatever the caller does, so the call returns the count (or fails at the command timeout or when
    /// the connection drops).
    ///
    /// - Returns: the number of clients that received it, as the server counts them (on a cluster: on this node).
    /// - Throws: as ``RedisConnection/send(_:_:)``.
    @discardableResult
    public func publish(_ message: some RedisPayload, to channel: some RedisNameConvertible) async throws(RedisError) -> Int {
        try await publish("PUBLISH", channel.redisArgument, message.redisArgument)
    }

    /// `SPUBLISH`: sends `message` to the subscribers of the sharded channel `channel` (Redis 7).
    ///
    /// Cancellation works as for ``publish(_:to:)``.
    ///
    /// - Returns: the number of clients that received it.
    /// - Throws: as ``RedisConnection/send(_:_:)``.
    @discardableResult
    public func publish(_ message: some RedisPayload, toShard channel: some RedisNameConvertible) async throws(RedisError) -> Int {
        try await publish("SPUBLISH", channel.redisArgument, message.redisArgument)
    }

    /// The one PUBLISH/SPUBLISH path (these helpers and ``Publisher``): encoded in one allocation, waited for without
    /// a cancellation handler (see ``sendUninterruptible(encoded:)``). Inlined: an async frame more on the publish
    /// path measurably costs (about 8% with 1,000 tasks on the loop).
    @inline(__always)
    func publish(_ verb: StaticString, _ channel: RedisArgument, _ message: RedisArgument) async throws(RedisError) -> Int {
        try Self.integer(verb, try await sendUninterruptible(encoded: RESP.encode(verb, channel, message)))
    }

    /// One PUBLISH/SPUBLISH per message, written together, with one wait for all the counts (in order).
    func publish(
        _ verb: StaticString, _ channel: RedisArgument, contentsOf messages: [RedisArgument]
    ) async throws(RedisError) -> [Int] {
        var bytes: [UInt8] = []
        for message in messages {  // growing geometrically: reserving per message would copy on every append
            RESP.append(verb, channel, message, to: &bytes)
        }
        var counts: [Int] = []
        counts.reserveCapacity(messages.count)
        for reply in try await sendBatch(encoded: bytes, commands: messages.count) {
            counts.append(try Self.integer(verb, reply))
        }
        return counts
    }

    /// `PUBSUB CHANNELS [pattern]`: the channels with at least one subscriber (patterns not counted), optionally
    /// only those matching a glob pattern, with their exact bytes, in byte order.
    ///
    /// - Throws: as ``RedisConnection/send(_:_:)``.
    public func pubsubChannels(matching pattern: (any RedisNameConvertible)? = nil) async throws(RedisError) -> [RedisName] {
        try names("PUBSUB CHANNELS", try await send(["PUBSUB", "CHANNELS"] + (pattern.map { [$0.redisArgument] } ?? [])))
    }

    /// `PUBSUB NUMSUB channel...`: the number of subscribers of each channel (pattern subscribers not counted),
    /// keyed by the exact name: `counts["news"]`, `counts[RedisName(bytes: [0x80])]`.
    ///
    /// - Throws: as ``RedisConnection/send(_:_:)``.
    public func pubsubNumberOfSubscribers(_ channels: [any RedisNameConvertible]) async throws(RedisError) -> [RedisName: Int] {
        try counts("PUBSUB NUMSUB", try await send(["PUBSUB", "NUMSUB"] + channels.map(\.redisArgument)))
    }

    /// `PUBSUB NUMPAT`: the number of pattern subscriptions across all clients.
    ///
    /// - Throws: as ``RedisConnection/send(_:_:)``.
    public func pubsubNumberOfPatterns() async throws(RedisError) -> Int {
        try Self.integer("PUBSUB NUMPAT", try await send(["PUBSUB", "NUMPAT"]))
    }

    /// `PUBSUB SHARDCHANNELS [pattern]`: the sharded channels with at least one subscriber (Redis 7), with their exact
    /// bytes, in byte order.
    ///
    /// - Throws: as ``RedisConnection/send(_:_:)``.
    public func pubsubShardChannels(matching pattern: (any RedisNameConvertible)? = nil) async throws(RedisError) -> [RedisName] {
        try names(
            "PUBSUB SHARDCHANNELS", try await send(["PUBSUB", "SHARDCHANNELS"] + (pattern.map { [$0.redisArgument] } ?? [])))
    }

    /// `PUBSUB SHARDNUMSUB channel...`: the number of subscribers of each sharded channel (Redis 7), keyed by the
    /// exact name.
    ///
    /// - Throws: as ``RedisConnection/send(_:_:)``.
    public func pubsubShardNumberOfSubscribers(
        _ channels: [any RedisNameConvertible]
    ) async throws(RedisError) -> [RedisName: Int] {
        try counts("PUBSUB SHARDNUMSUB", try await send(["PUBSUB", "SHARDNUMSUB"] + channels.map(\.redisArgument)))
    }

    // MARK: Reply shapes

    static func unexpected(_ command: String, _ reply: RedisValue) -> RedisError {
        RedisError(.protocolError, "unexpected reply to \(command): \(reply.shape)")
    }

    static func integer(_ command: StaticString, _ reply: RedisValue) throws(RedisError) -> Int {
        guard case .integer(let value) = reply else { throw unexpected("\(command)", reply) }
        return value
    }

    private func names(_ command: String, _ reply: RedisValue) throws(RedisError) -> [RedisName] {
        guard let elements = reply.array else { throw Self.unexpected(command, reply) }
        var names: [RedisName] = []
        for element in elements {
            guard let bytes = element.bytes else { throw Self.unexpected(command, reply) }
            names.append(RedisName(bytes: bytes))
        }
        return names.sorted()
    }

    private func counts(_ command: String, _ reply: RedisValue) throws(RedisError) -> [RedisName: Int] {
        guard let elements = reply.array, elements.count % 2 == 0 else { throw Self.unexpected(command, reply) }
        var result: [RedisName: Int] = [:]
        for index in stride(from: 0, to: elements.count, by: 2) {
            guard let name = elements[index].bytes, let count = elements[index + 1].int else {
                throw Self.unexpected(command, reply)
            }
            result[RedisName(bytes: name)] = count
        }
        return result
    }
}
