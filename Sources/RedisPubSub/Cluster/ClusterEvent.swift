/// A change in how a ``ClusterSubscriber`` or ``ClusterPublisher`` reaches the cluster, for logs and dashboards. The
/// subscriptions report their own gaps (``SubscriptionEvent``).
public enum ClusterEvent: Sendable, Hashable, CustomStringConvertible {
    /// A fetched map differs from the one before: these primaries (`host:port`) serve the slots now.
    case topologyChanged(primaries: [String])
    /// Fetching the map failed on every node tried; it is tried again.
    case topologyRefreshFailed(RedisError)
    /// A connection to a node is ready (the first time, or again after it was lost).
    case nodeConnected(node: String)
    /// The connection to a node was lost: its channels receive nothing until they are subscribed again, there or on
    /// the node that took its slots over.
    case nodeDisconnected(node: String, cause: RedisError)
    /// Channels were subscribed again on another node: their slot migrated, or their primary failed over.
    case channelsMoved(from: String, to: String, channels: [RedisName])

    /// A one-line account for logs.
    public var description: String {
        switch self {
        case .topologyChanged(let primaries): "cluster map changed: primaries \(primaries.joined(separator: ", "))"
        case .topologyRefreshFailed(let error): "fetching the cluster map failed: \(error)"
        case .nodeConnected(let node): "connected to \(node)"
        case .nodeDisconnected(let node, let cause): "lost \(node): \(cause)"
        case .channelsMoved(let from, let to, let channels):
            "\(channels.count) channel\(channels.count == 1 ? "" : "s") moved from \(from) to \(to)"
                + (channels.count <= 3 ? ": " + channels.map(\.description).joined(separator: ", ") : "")
        }
    }
}
