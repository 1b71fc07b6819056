/// What happened to a ``StreamConsumer`` besides delivering entries: the failure cases of consumer groups, each
/// reported once, so an application can log and count them.
public enum StreamConsumerEvent: Sendable, Hashable, CustomStringConvertible {
    /// Reading failed because the connection was lost (or did not answer); the consumer reconnects and then first
    /// reads its own pending entries again, so nothing the server delivered in between is skipped.
    case disconnected(cause: RedisError)
    /// Reading works again after ``disconnected(cause:)``.
    case reconnected
    /// Pending entries of another consumer, idle longer than ``StreamConsumer/Options/claimIdle``, were taken over
    /// and are delivered here.
    case claimed(stream: RedisName, ids: [StreamEntryID], from: [RedisName])
    /// An entry delivered more than ``StreamConsumer/Options/maxDeliveries`` times was appended to the dead-letter
    /// stream (with its fields, and `original-stream`, `original-id`, `delivery-count`, `reason`) and acknowledged.
    case deadLettered(stream: RedisName, id: StreamEntryID, deliveryCount: Int, deadLetterStream: RedisName, deadLetterID: StreamEntryID)
    /// Pending entries that were deleted from the stream (trimmed, or `XDEL`) before they were acknowledged: their
    /// content is gone and they cannot be delivered. They are removed from the pending list.
    case lost(stream: RedisName, ids: [StreamEntryID])
    /// The group does not exist (the stream was deleted or flushed, or the group destroyed): the consumer creates it
    /// again, from the stream's first entry, as soon as it can, and reports ``groupCreated(stream:)``.
    case groupMissing(stream: RedisName)
    /// The group was created again after ``groupMissing(stream:)``.
    case groupCreated(stream: RedisName)
    /// Consumers idle at least ``StreamConsumer/Options/removeIdleConsumersAfter`` with nothing pending were
    /// removed from the group.
    case consumersRemoved(stream: RedisName, consumers: [RedisName])
    /// A command failed with an error that is not a lost connection (a permission, a script error): the consumer
    /// retries after a back-off.
    case failed(RedisError)

    /// A one-line account for logs.
    public var description: String {
        switch self {
        case .disconnected(let cause): "disconnected: \(cause)"
        case .reconnected: "reconnected"
        case .claimed(let stream, let ids, let from):
            "claimed \(ids.count) idle entr\(ids.count == 1 ? "y" : "ies") of \(stream) from \(from.map(\.description).joined(separator: ", "))"
        case .deadLettered(let stream, let id, let count, let target, let newID):
            "moved \(stream) \(id) to \(target) as \(newID) after \(count) deliveries"
        case .lost(let stream, let ids):
            "lost \(ids.count) pending entr\(ids.count == 1 ? "y" : "ies") of \(stream), deleted before acknowledgement: "
                + ids.prefix(10).map(\.description).joined(separator: ", ") + (ids.count > 10 ? ", …" : "")
        case .groupMissing(let stream): "the consumer group of \(stream) is missing (NOGROUP); creating it again"
        case .groupCreated(let stream): "the consumer group of \(stream) was created again"
        case .consumersRemoved(let stream, let consumers):
            "removed idle consumer\(consumers.count == 1 ? "" : "s") with nothing pending from the group of \(stream): "
                + consumers.map(\.description).joined(separator: ", ")
        case .failed(let error): "failed: \(error)"
        }
    }
}
