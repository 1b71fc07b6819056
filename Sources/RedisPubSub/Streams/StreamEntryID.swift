/// The ID of an entry in a Redis Stream: milliseconds and a sequence number, written `1700000000000-0`.
///
/// IDs order entries: a stream's entries are in ascending ID order, and `<` follows it.
public struct StreamEntryID: Hashable, Sendable, Comparable, CustomStringConvertible, RedisArgumentConvertible {
    /// The milliseconds part (the server's clock when it chose the ID, unless the appender chose it).
    public var milliseconds: UInt64
    /// The sequence number among entries with the same milliseconds.
    public var sequence: UInt64

    /// The ID `milliseconds-sequence`.
    public init(milliseconds: UInt64, sequence: UInt64) {
        self.milliseconds = milliseconds
        self.sequence = sequence
    }

    /// Parses `1700000000000-0` (or `1700000000000`, sequence 0); `nil` for anything else.
    public init?(_ text: some StringProtocol) {
        self.init(bytes: Array(text.utf8))
    }

    /// Parses an ID from the server's bytes.
    init?(bytes: [UInt8]) {
        guard let dash = bytes.firstIndex(of: UInt8(ascii: "-")) else {
            guard let milliseconds = Self.number(bytes[...]) else { return nil }
            self.init(milliseconds: milliseconds, sequence: 0)
            return
        }
        guard let milliseconds = Self.number(bytes[..<dash]), let sequence = Self.number(bytes[(dash + 1)...]) else {
            return nil
        }
        self.init(milliseconds: milliseconds, sequence: sequence)
    }

    /// The smallest ID, `0-0`: reading a group's pending entries "after 0-0" reads all of them.
    public static let zero = StreamEntryID(milliseconds: 0, sequence: 0)

    /// `milliseconds-sequence`.
    public var description: String { "\(milliseconds)-\(sequence)" }

    /// The ID as a command argument.
    public var redisArgument: RedisArgument {
        // Digits straight into bytes: every acknowledgement sends one per entry, and a String costs more.
        var bytes: [UInt8] = []
        bytes.reserveCapacity(41)
        RESP.appendDecimal(UInt(milliseconds), to: &bytes)
        bytes.append(UInt8(ascii: "-"))
        RESP.appendDecimal(UInt(sequence), to: &bytes)
        return RedisArgument(bytes)
    }

    /// Whether `a` comes before `b` in a stream.
    public static func < (a: StreamEntryID, b: StreamEntryID) -> Bool {
        (a.milliseconds, a.sequence) < (b.milliseconds, b.sequence)
    }

    private static func number(_ digits: ArraySlice<UInt8>) -> UInt64? {
        guard !digits.isEmpty, digits.count <= 20 else { return nil }
        var value: UInt64 = 0
        for byte in digits {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            let (times10, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times10.addingReportingOverflow(UInt64(byte - UInt8(ascii: "0")))
            guard !overflow1, !overflow2 else { return nil }
            value = sum
        }
        return value
    }
}
