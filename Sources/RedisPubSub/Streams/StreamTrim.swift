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
        case window(Duration)
    }
    let bound: Bound
    let exact: Bool

    /// Keeps about the newest `count` entries (`MAXLEN ~ count`), or exactly `count` with `exact: true`; a negative
    /// count is 0.
    public static func maxLength(_ count: Int, exact: Bool = false) -> StreamTrim {
        StreamTrim(bound: .maxLength(max(0, count)), exact: exact)
    }

    /// Removes entries with IDs below `id` (`MINID ~ id`): a time window, since IDs start with milliseconds.
    public static func minimumID(_ id: StreamEntryID, exact: Bool = false) -> StreamTrim {
        StreamTrim(bound: .minimumID(id), exact: exact)
    }

    /// Keeps about the entries appended in the last `window`: each append trims with `MINID ~ <now - window>`, `now`
    /// being the caller's wall clock when that append is sent (stream IDs start with the server's milliseconds, so
    /// clocks apart by a second move the window by a second).
    public static func newerThan(_ window: Duration, exact: Bool = false) -> StreamTrim {
        StreamTrim(bound: .window(window), exact: exact)
    }

    /// The wall clock in milliseconds since 1970, as stream IDs count it.
    static func millisecondsSinceEpoch() -> UInt64 {
        UInt64(max(0, Date().timeIntervalSince1970 * 1000))
    }

    /// The arguments: `MAXLEN ~ 1000`, `MINID = 1700000000000-0`.
    var arguments: [RedisArgument] { arguments(now: Self.millisecondsSinceEpoch()) }

    /// The arguments with the wall clock at `now` milliseconds.
    func arguments(now: UInt64) -> [RedisArgument] {
        let mode: RedisArgument = exact ? "=" : "~"
        switch bound {
        case .maxLength(let count): return ["MAXLEN", mode, RedisArgument(count)]
        case .minimumID(let id): return ["MINID", mode, id.redisArgument]
        case .window(let window):
            // Saturating: a window of `.seconds(.max)` ("keep everything") is 0-0, not a trap.
            let seconds = UInt64(max(0, window.components.seconds))
            let (whole, overflow) = seconds.multipliedReportingOverflow(by: 1000)
            let width = overflow ? UInt64.max : whole &+ UInt64(max(0, window.components.attoseconds) / 1_000_000_000_000_000)
            let cut = now > width ? now - width : 0
            return ["MINID", mode, StreamEntryID(milliseconds: cut, sequence: 0).redisArgument]
        }
    }
}
