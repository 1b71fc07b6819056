/// Reading the server's replies to the stream commands a ``StreamConsumer`` or a ``StreamReader`` sends. Pure
/// functions: a reply of an unexpected shape is a protocol error (``RedisError/Code/protocolError``), never a crash.
enum StreamReplies {
    typealias RawEntry = StreamConsumerStateMachine.RawEntry
    typealias Candidate = StreamConsumerStateMachine.Candidate

    /// `XREADGROUP`/`XREAD`: null (nothing before the block timeout), or `[[stream, [[id, [field, value, ...]|nil],
    /// ...]], ...]`. Returns the entries per stream name.
    static func read(_ reply: RedisValue) throws(RedisError) -> [(stream: [UInt8], entries: [RawEntry])] {
        if reply.isNull { return [] }
        guard let streams = reply.array else { throw unexpected("XREADGROUP", reply) }
        var result: [(stream: [UInt8], entries: [RawEntry])] = []
        result.reserveCapacity(streams.count)
        for element in streams {
            guard let pair = element.array, pair.count == 2, let name = pair[0].bytes else {
                throw unexpected("XREADGROUP", reply)
            }
            result.append((name, try entries(pair[1], "XREADGROUP")))
        }
        return result
    }

    /// An array of entries `[[id, [field, value, ...] | nil], ...]` (`XREADGROUP`'s per-stream part, `XCLAIM`, `XRANGE`).
    static func entries(_ reply: RedisValue, _ command: String) throws(RedisError) -> [RawEntry] {
        if reply.isNull { return [] }
        guard let items = reply.array else { throw unexpected(command, reply) }
        var entries: [RawEntry] = []
        entries.reserveCapacity(items.count)
        for item in items {
            // Redis 6.2's XCLAIM answers a deleted entry with a null in place of the whole entry: skipped here, and
            // so counted as lost by the caller, as 7.0's omission is.
            if item.isNull { continue }
            guard let pair = item.array, pair.count == 2, let id = pair[0].bytes.flatMap(StreamEntryID.init(bytes:)) else {
                throw unexpected(command, reply)
            }
            if pair[1].isNull {
                entries.append(RawEntry(id: id, fields: nil))  // deleted while pending
                continue
            }
            guard let flat = pair[1].array, flat.count % 2 == 0 else { throw unexpected(command, reply) }
            var fields: [StreamField] = []
            fields.reserveCapacity(flat.count / 2)
            var index = 0
            while index < flat.count {
                guard let name = flat[index].bytes, let value = flat[index + 1].bytes else { throw unexpected(command, reply) }
                fields.append(StreamField(name: RedisName(bytes: name), value: value))
                index += 2
            }
            entries.append(RawEntry(id: id, fields: fields))
        }
        return entries
    }

    /// `XPENDING key group [IDLE ms] start end count [consumer]`: `[[id, consumer, idle ms, delivery count], ...]`.
    static func pending(_ reply: RedisValue) throws(RedisError) -> [Candidate] {
        guard let items = reply.array else { throw unexpected("XPENDING", reply) }
        var result: [Candidate] = []
        result.reserveCapacity(items.count)
        for item in items {
            guard let fields = item.array, fields.count == 4,
                let id = fields[0].bytes.flatMap(StreamEntryID.init(bytes:)),
                let consumer = fields[1].bytes, let count = fields[3].int
            else { throw unexpected("XPENDING", reply) }
            result.append(Candidate(id: id, consumer: RedisName(bytes: consumer), deliveryCount: count))
        }
        return result
    }

    /// A list of IDs (`XCLAIM ... JUSTID`).
    static func ids(_ reply: RedisValue, _ command: String) throws(RedisError) -> [StreamEntryID] {
        guard let items = reply.array else { throw unexpected(command, reply) }
        var ids: [StreamEntryID] = []
        for item in items {
            guard let id = item.bytes.flatMap(StreamEntryID.init(bytes:)) else { throw unexpected(command, reply) }
            ids.append(id)
        }
        return ids
    }

    /// The reclaim script's `{pending, claimed}`.
    static func reclaim(_ reply: RedisValue) throws(RedisError) -> (candidates: [Candidate], claimed: [RawEntry]) {
        guard let pair = reply.array, pair.count == 2 else { throw unexpected("the reclaim script", reply) }
        return (try pending(pair[0]), try entries(pair[1], "XCLAIM"))
    }

    /// What `XINFO STREAM` tells a ``StreamReader``: the last ID, the entries ever added (7.0+; `nil` before), the
    /// length, and the first entry's ID (`nil` when empty).
    struct StreamInfo: Equatable {
        var lastGenerated: StreamEntryID
        var entriesAdded: Int?
        var length: Int
        var firstID: StreamEntryID?
    }

    /// `XINFO STREAM`, from its flat list of names and values.
    static func streamInfo(_ reply: RedisValue) throws(RedisError) -> StreamInfo {
        guard let items = reply.array, items.count % 2 == 0 else { throw unexpected("XINFO STREAM", reply) }
        var lastGenerated: StreamEntryID?
        var entriesAdded: Int?
        var length: Int?
        var firstID: StreamEntryID?
        var index = 0
        while index < items.count {
            let value = items[index + 1]
            switch items[index].bytes.map({ String(decoding: $0, as: UTF8.self) }) {
            case "last-generated-id": lastGenerated = value.bytes.flatMap(StreamEntryID.init(bytes:))
            case "entries-added": entriesAdded = value.int
            case "length": length = value.int
            case "first-entry": firstID = value.array?.first?.bytes.flatMap(StreamEntryID.init(bytes:))
            default: break
            }
            index += 2
        }
        guard let lastGenerated, let length else { throw unexpected("XINFO STREAM", reply) }
        return StreamInfo(lastGenerated: lastGenerated, entriesAdded: entriesAdded, length: length, firstID: firstID)
    }

    /// Names the reply's shape, not its content (which may be an application's payload).
    private static func unexpected(_ command: String, _ reply: RedisValue) -> RedisError {
        let shape = switch reply {
        case .array(let elements): "an array of \(elements.count)"
        case .bulkString(let bytes): "a \(bytes.count)-byte string"
        case .simpleString: "a status reply"
        case .integer: "an integer"
        case .error: "an error"
        case .null: "null"
        }
        return RedisError(.protocolError, "unexpected reply to \(command) (\(shape))")
    }
}
