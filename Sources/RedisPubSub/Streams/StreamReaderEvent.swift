/// What happened to a ``StreamReader`` besides delivering entries, each reported once, so an application can log and
/// count them.
public enum StreamReaderEvent: Sendable, Hashable, CustomStringConvertible {
    /// Reading failed because the connection was lost (or did not answer); the reader reconnects and goes on after
    /// the last entry it read, so nothing still in the stream is skipped.
    case disconnected(cause: RedisError)
    /// Reading works again after ``disconnected(cause:)``.
    case reconnected
    /// `count` entries of `stream` appended after `after` were deleted before the reader read them: trimmed
    /// (`MAXLEN`/`MINID`) while the reader was behind (its loop slow, or the reader disconnected), or removed with
    /// `XDEL`. Counted exactly from the stream's count of entries ever added (Redis 7.0 and later), from the
    /// reader's first read on: entries deleted before a reader started ``StreamReader/Start/after(_:)`` an ID, and
    /// before its first read found where it stands, are not counted.
    case lost(stream: RedisName, count: Int, after: StreamEntryID)
    /// A command failed with an error that is not a lost connection (a key of another type, a permission): the
    /// reader retries after a back-off.
    case failed(RedisError)

    /// A one-line account for logs.
    public var description: String {
        switch self {
        case .disconnected(let cause): "disconnected: \(cause)"
        case .reconnected: "reconnected"
        case .lost(let stream, let count, let after):
            "lost \(count) entr\(count == 1 ? "y" : "ies") of \(stream) after \(after), deleted before they were read"
        case .failed(let error): "failed: \(error)"
        }
    }
}
