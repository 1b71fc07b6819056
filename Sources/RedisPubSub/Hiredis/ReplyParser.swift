internal import CHiredis

/// Parses RESP bytes with hiredis's reader into values, exactly as replies off a connection are decoded.
/// The connection does not use it (it reads through the context's own reader); tests and tools do.
enum ReplyParser {
    /// The complete replies in `bytes`, in order.
    ///
    /// - Throws: ``RedisError/Code/protocolError`` for bytes that are not RESP (hiredis's own message).
    static func parse(_ bytes: [UInt8]) throws(RedisError) -> [RedisValue] {
        guard let reader = redisReaderCreate() else { throw RedisError(.protocolError, "out of memory") }
        defer { redisReaderFree(reader) }
        let fed = bytes.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { redisReaderFeed(reader, $0.baseAddress, buffer.count) }
        }
        guard fed == REDIS_OK else { throw RedisError(.protocolError, "hiredis could not buffer the input") }
        var values: [RedisValue] = []
        while true {
            var raw: UnsafeMutableRawPointer?
            guard redisReaderGetReply(reader, &raw) == REDIS_OK else {
                let message = withUnsafePointer(to: &reader.pointee.errstr) {
                    $0.withMemoryRebound(to: CChar.self, capacity: 128) { String(cString: $0) }
                }
                throw RedisError(.protocolError, message)
            }
            guard let reply = raw else { return values }
            defer { freeReplyObject(reply) }
            values.append(try RedisValue.decode(reply.assumingMemoryBound(to: redisReply.self)))
        }
    }
}
