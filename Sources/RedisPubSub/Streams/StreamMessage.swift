import Synchronization

/// One entry of a stream as a ``StreamConsumer`` delivers it: its ID, fields and delivery count, and the way to
/// settle it, ``ack()`` or ``fail()``.
///
/// An entry is pending in its group until acknowledged. Call ``ack()`` once it is processed. While a handler holds
/// the message, its lease is kept fresh so no other consumer takes it over; a message let go (every copy released)
/// without ``ack()`` or ``fail()`` counts as failed and is delivered again. A consumer that crashes leaves its
/// entries pending: they are delivered again to it after a restart under the same name, or to another consumer once
/// idle ``StreamConsumer/Options/claimIdle``.
public struct StreamMessage: StreamEntryContent {
    /// The stream the entry belongs to.
    public let stream: RedisName
    /// The entry's ID.
    public let id: StreamEntryID
    /// The entry's fields, in order.
    public let fields: [StreamField]
    /// How many times the group has delivered the entry, this delivery included: 1 the first time, more after a
    /// consumer failed, crashed or was too slow.
    public let deliveryCount: Int
    let settlement: StreamSettlement?

    init(stream: RedisName, id: StreamEntryID, fields: [StreamField], deliveryCount: Int, settlement: StreamSettlement?) {
        self.stream = stream
        self.id = id
        self.fields = fields
        self.deliveryCount = deliveryCount
        self.settlement = settlement
    }

    /// Acknowledges the entry (`XACK`): it leaves the group's pending list and is never delivered again. Returns at
    /// once; acknowledgements are batched, one `XACK` per stream in flight, and the entry's place in the prefetch
    /// frees when the server confirms it. Only the first ``ack()`` or ``fail()`` of an entry counts. An
    /// acknowledgement made after the consumer closed is not sent: the entry is delivered again (at least once).
    public func ack() {
        settlement?.settle(acknowledging: true)
    }

    /// Gives the entry back without acknowledging it: it is delivered again, to any consumer of the group once
    /// another consumer's reclaim takes it (at once: its idle time is set to ``StreamConsumer/Options/claimIdle``),
    /// counting one more delivery, and it moves to the dead-letter stream after
    /// ``StreamConsumer/Options/maxDeliveries``. Without reclaiming (`claimIdle` `nil`), it stays pending under this
    /// consumer until it reads its own pending entries again (after a reconnect or a restart).
    public func fail() {
        settlement?.settle(acknowledging: false)
    }
}

extension StreamMessage: CustomStringConvertible {
    /// E.g. `orders 1700000000000-0: "order 42 paid"` (the payload, else the fields).
    public var description: String {
        "\(stream) \(id): " + body + (deliveryCount > 1 ? " (delivery \(deliveryCount))" : "")
    }
}

/// Where a message's ``StreamMessage/ack()`` or ``StreamMessage/fail()`` goes: its consumer, once.
final class StreamSettlement: Sendable {
    let key: StreamConsumerStateMachine.Key
    private let settled = Atomic<Bool>(false)
    /// Strong: a message kept after its consumer went away can still be settled until the consumer closes (a weak
    /// reference cost a side-table operation per message). The cycle through the delivery queue ends at the close,
    /// which empties it.
    private let consumer: StreamConsumerCore

    init(key: StreamConsumerStateMachine.Key, consumer: StreamConsumerCore) {
        self.key = key
        self.consumer = consumer
    }

    /// A message let go without ``StreamMessage/ack()`` or ``StreamMessage/fail()`` (a loop left with `break` or a
    /// throw, say) is failed: its place in the prefetch frees, and it is delivered again.
    deinit {
        settle(acknowledging: false)
    }

    /// Whether ``StreamMessage/ack()`` or ``StreamMessage/fail()`` was called.
    var isSettled: Bool { settled.load(ordering: .acquiring) }

    func settle(acknowledging: Bool) {
        guard settled.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else { return }
        if acknowledging { consumer.acknowledge(key) } else { consumer.fail(key) }
    }
}
