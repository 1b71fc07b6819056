#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The reply an UNSUBSCRIBE-family command waits for: `["sunsubscribe", name, count]` and the like. An
/// unsubscribe-shaped reply that is not the one awaited is the server's own decision (a sharded channel's slot moved).
struct Acknowledgement: Hashable {
    let type: [UInt8]
    let name: [UInt8]
}

/// Receives the Pub/Sub pushes and connection changes of a Subscriber connection. Loop-confined.
protocol PushHandler: AnyObject {
    /// Takes `reply` if it is a push: a message whose shape the fast path does not take (a payload that is not a
    /// string, such as the key list on `__redis__:invalidate`), a malformed message (dropped and counted), or an
    /// unsubscribe the server decided on. Returns `false` for replies to requests. `awaited` is the acknowledgement
    /// the oldest command in flight waits for, if any.
    func handlePush(_ reply: RedisValue, awaited: Acknowledgement?) -> Bool
    /// A message recognised in the raw reply (the fast path of ``handlePush(_:awaited:)``).
    func handleMessage(_ push: RawPush)
    /// The end of one read from the socket: hand what was routed to the consumers.
    func flush()
    /// The connection was lost at `date` and will be retried: nothing arrives until ``connectionRestored(at:downtime:)``.
    func connectionLost(_ error: RedisError, at date: Date)
    /// Connected again (handshake done): re-establish what the server forgot.
    func connectionRestored(at date: Date, downtime: Duration)
    /// Closed for good: by `close()` (`nil`) or by `error`.
    func connectionClosed(_ error: RedisError?)
}
