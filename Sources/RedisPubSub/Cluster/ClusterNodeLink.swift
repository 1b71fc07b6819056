#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// One subscriber connection to a cluster node (its own, or a handover's), as its ``ClusterSubscriberCore`` sees it: the connection's pushes and
/// changes, tagged with the node they came from. Loop-confined.
final class ClusterNodeLink: PushHandler {
    let node: ClusterNodeAddress
    /// The handover this connection was opened for; `nil` for the node's own connection.
    let handover: UInt64?
    let connection: ConnectionCore
    private let core: ClusterSubscriberCore
    /// The core gave this connection up (or replaced it): nothing it reports counts any more.
    private(set) var isDetached = false
    /// The last routed name and its recipients, valid while the core's generation is unchanged.
    var routeCache: (generation: UInt64, kind: SubscriptionKind, name: [UInt8], sinks: [SubscriptionSink])?

    init(node: ClusterNodeAddress, handover: UInt64? = nil, core: ClusterSubscriberCore, connection: ConnectionCore) {
        self.node = node
        self.handover = handover
        self.core = core
        self.connection = connection
    }

    /// Closes the connection, after what is in flight; it reports nothing more.
    func detach() {
        isDetached = true
        routeCache = nil
        connection.close()
    }

    /// Closes gracefully (the core is closing): messages still arrive until the unsubscribes are acknowledged;
    /// `completion` runs once the socket is closed.
    func close(_ completion: @escaping @Sendable () -> Void) {
        connection.close(completion)
    }

    // MARK: PushHandler

    func handlePush(_ reply: RedisValue, awaited: Acknowledgement?) -> Bool {
        if isDetached { return PubSubPush(reply, awaited: awaited) != nil }  // swallowed: no reply can match it
        return core.handlePush(reply, awaited: awaited, from: self)
    }

    func handleMessage(_ push: RawPush) {
        guard !isDetached else { return }
        core.route(push, from: self)
    }

    func flush() { core.flush() }

    func connectionLost(_ error: RedisError, at date: Date) {
        guard !isDetached else { return }
        core.linkLost(self, error)
    }

    func connectionRestored(at date: Date, downtime: Duration) {
        guard !isDetached else { return }
        core.linkRestored(self)
    }

    func connectionClosed(_ error: RedisError?) {
        guard !isDetached else { return }
        core.linkClosed(self, error)
    }
}
