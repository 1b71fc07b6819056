/// Encodes commands as RESP arrays of bulk strings: the request format every Redis command takes.
enum RESP {
    /// The complete request for `arguments`.
    static func encode(_ arguments: [RedisArgument]) -> [UInt8] {
        var size = 1 + 20 + 2
        for argument in arguments { size += 1 + 20 + 2 + argument.count + 2 }
        var out = [UInt8]()
        out.reserveCapacity(size)
        append(arguments, to: &out)
        return out
    }

    /// Appends the request for `arguments` (batches encode their commands back to back).
    static func append(_ arguments: [RedisArgument], to out: inout [UInt8]) {
        out.append(UInt8(ascii: "*"))
        appendDecimal(arguments.count, to: &out)
        out.append(13); out.append(10)
        for argument in arguments { append(argument, to: &out) }
    }

    /// Appends the request for `prefix` followed by `last`, without building the array (a batch of commands that
    /// differ only in their last argument).
    static func append(_ prefix: [RedisArgument], _ last: RedisArgument, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "*"))
        appendDecimal(prefix.count + 1, to: &out)
        out.append(13); out.append(10)
        for argument in prefix { append(argument, to: &out) }
        append(last, to: &out)
    }

    /// `*3 $verb $channel $message` in one exact-size allocation (the publish fast path).
    static func encode(_ verb: StaticString, _ first: RedisArgument, _ second: RedisArgument) -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(encodedSizeBound(verb, first, second))
        append(verb, first, second, to: &out)
        return out
    }

    /// At least the size of `*3 $verb $first $second`.
    static func encodedSizeBound(_ verb: StaticString, _ first: RedisArgument, _ second: RedisArgument) -> Int {
        4 + 3 * 24 + verb.utf8CodeUnitCount + first.count + second.count
    }

    /// Appends `*3 $verb $first $second` (batches encode their commands back to back).
    static func append(_ verb: StaticString, _ first: RedisArgument, _ second: RedisArgument, to out: inout [UInt8]) {
        out.append(contentsOf: [UInt8(ascii: "*"), UInt8(ascii: "3"), 13, 10, UInt8(ascii: "$")])
        appendDecimal(verb.utf8CodeUnitCount, to: &out)
        out.append(13); out.append(10)
        verb.withUTF8Buffer { out.append(contentsOf: $0) }
        out.append(13); out.append(10)
        append(first, to: &out)
        append(second, to: &out)
    }

    static func append(_ argument: RedisArgument, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "$"))
        appendDecimal(argument.count, to: &out)
        out.append(13); out.append(10)
        switch argument.storage {
        case .string(let string):
            var string = string
            string.withUTF8 { out.append(contentsOf: $0) }
        case .bytes(let bytes):
            out.append(contentsOf: bytes)
        }
        out.append(13); out.append(10)
    }

    static func appendDecimal(_ value: Int, to out: inout [UInt8]) {
        if value < 0 {
            out.append(UInt8(ascii: "-"))
            appendDecimal(UInt(value.magnitude), to: &out)
        } else {
            appendDecimal(UInt(value), to: &out)
        }
    }

    static func appendDecimal(_ value: UInt, to out: inout [UInt8]) {
        if value < 10 {
            out.append(UInt8(ascii: "0") + UInt8(value))
            return
        }
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                     UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var remaining = value
        var count = 0
        withUnsafeMutableBytes(of: &digits) { buffer in
            while remaining > 0 {
                buffer[19 - count] = UInt8(ascii: "0") + UInt8(remaining % 10)
                remaining /= 10
                count += 1
            }
            out.append(contentsOf: buffer[(20 - count)...])
        }
    }
}
