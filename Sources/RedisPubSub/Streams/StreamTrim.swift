#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// How an append trims its stream, so that it cannot grow without bound (`XADD ... MAXLEN` or `MINID`).
///
/// Approximate trimming (`~`, the default) lets the server remove whole internal nodes only, which costs almost
/// nothing; the stream may then hold somewhat more than the bound. Exact trimming (`=`) keeps the bound to the entry.
///
/// Trimming removes entries whether or not a consumer group has read or acknowledged them: an entry trimmed while
/// pending in a group is gone.
public struct StreamTrim: Hashable, Sendable {
    enum Bound: Hashable, Sendable {
        case maxLength(Int)
        case minimumID(StreamEntryID)
    }
    let bound: Bound
    let exact: Bool

    /// Keeps about the newest `count` entries (`MAXLEN ~ count`), or exactly `count` with `exact: true`.
    public static func maxLength(_ count: Int, exact: Bool = false) -> StreamTrim {
        StreamTrim(bound: .maxLength(max(0, count)), exact: exact)
    }

    /// Removes entries with IDs below `id` (`MINID ~ id`): a time window, since IDs start with milliseconds.
    public static func minimumID(_ id: StreamEntryID, exact: Bool = false) -> StreamTrim {
        StreamTrim(bound: .minimumID(id), exact: exact)
    }

    /// Keeps about the entries appended in the last `window` (by the caller's clock against the server's IDs:
    /// `MINID ~ <now - window>`).
    public static func newerThan(_ window: Duration, now: UInt64 = StreamTrim.millisecondsSinceEpoch()) -> StreamTrim {
        let milliseconds = UInt64(max(0, window.components.seconds)) * 1000
            + UInt64(max(0, window.components.attoseconds) / 1_000_000_000_000_000)
        return .minimumID(StreamEntryID(milliseconds: now > milliseconds ? now - milliseconds : 0, sequence: 0))
    }

    /// The wall clock in milliseconds since 1970, as stream IDs count it.
    public static func millisecondsSinceEpoch() -> UInt64 {
        UInt64(max(0, Date().timeIntervalSince1970 * 1000))
    }

    /// The arguments: `MAXLEN ~ 1000`, `MINID = 1700000000000-0`.
    var arguments: [RedisArgument] {
        let mode: RedisArgument = exact ? "=" : "~"
        switch bound {
        case .maxLength(let count): return ["MAXLEN", mode, RedisArgument(count)]
        case .minimumID(let id): return ["MINID", mode, id.redisArgument]
        }
    }
}
