internal import CHiredis

extension RedisValue {
    /// The deepest nesting of arrays a reply may have. Real replies stay in single digits (hiredis 0.14 refuses more
    /// than 7); a hostile or broken server that sends thousands of `*1\r\n` gets a protocol error instead of
    /// exhausting the loop thread's stack (nested values are also released recursively).
    static let maximumDepth = 512

    /// Copies a hiredis reply (hiredis frees the original as soon as the caller returns), without recursion.
    ///
    /// - Throws: ``RedisError/Code/protocolError`` for a reply nested deeper than ``maximumDepth``.
    static func decode(_ reply: UnsafePointer<redisReply>) throws(RedisError) -> RedisValue {
        guard isAggregate(reply) else { return leaf(reply) }
        // An explicit stack of the arrays being filled: the reply, the next element's index, the elements so far.
        var stack: [(reply: UnsafePointer<redisReply>, next: Int, elements: [RedisValue])] = []
        stack.append((reply, 0, []))
        stack[0].elements.reserveCapacity(Int(reply.pointee.elements))
        while true {
            let top = stack.count - 1
            let parent = stack[top].reply.pointee
            if stack[top].next < Int(parent.elements), let children = parent.element {
                let child = UnsafePointer(children[stack[top].next]!)
                stack[top].next += 1
                if isAggregate(child) {
                    guard stack.count < maximumDepth else {
                        throw RedisError(.protocolError, "the server sent a reply nested deeper than \(maximumDepth) levels")
                    }
                    var elements: [RedisValue] = []
                    elements.reserveCapacity(Int(child.pointee.elements))
                    stack.append((child, 0, elements))
                } else {
                    stack[top].elements.append(leaf(child))
                }
            } else {
                let finished = stack.removeLast()
                let value = RedisValue.array(finished.elements)
                if stack.isEmpty { return value }
                stack[stack.count - 1].elements.append(value)
            }
        }
    }

    private static func isAggregate(_ reply: UnsafePointer<redisReply>) -> Bool {
        switch reply.pointee.type {
        // RESP3 (hiredis 1.x only, after a user's HELLO 3): mapped onto arrays.
        case REDIS_REPLY_ARRAY, CHIREDIS_REPLY_MAP, CHIREDIS_REPLY_SET, CHIREDIS_REPLY_ATTR, CHIREDIS_REPLY_PUSH: true
        default: false
        }
    }

    private static func leaf(_ reply: UnsafePointer<redisReply>) -> RedisValue {
        let r = reply.pointee
        func text() -> String {
            guard let str = r.str else { return "" }
            return String(decoding: UnsafeRawBufferPointer(start: str, count: Int(r.len)), as: UTF8.self)
        }
        func bytes() -> [UInt8] {
            guard let str = r.str, r.len > 0 else { return [] }
            return Array(UnsafeRawBufferPointer(start: str, count: Int(r.len)))
        }
        switch r.type {
        case REDIS_REPLY_STRING: return .bulkString(bytes())
        case REDIS_REPLY_STATUS: return .simpleString(text())
        case REDIS_REPLY_ERROR: return .error(text())
        case REDIS_REPLY_INTEGER: return .integer(Int(r.integer))
        case REDIS_REPLY_NIL: return .null
        // RESP3 scalars (hiredis 1.x only) in their RESP2 shapes.
        case CHIREDIS_REPLY_DOUBLE, CHIREDIS_REPLY_BIGNUM, CHIREDIS_REPLY_VERB: return .bulkString(bytes())
        case CHIREDIS_REPLY_BOOL: return .integer(Int(r.integer))
        default: return .error("unknown hiredis reply type \(r.type)")
        }
    }
}
