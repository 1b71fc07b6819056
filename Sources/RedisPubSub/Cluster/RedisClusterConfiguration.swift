/// How to reach a Redis Cluster: one or more seed nodes to learn its map from, and the settings every node's
/// connection uses.
///
/// ```swift
/// let cluster = try RedisClusterConfiguration(urls: ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"])
/// let subscriber = try await ClusterSubscriber.connect(to: cluster)
/// ```
///
/// Every node is reached with the first seed's settings (credentials, TLS, timeouts, reconnect policy, health check),
/// at the address the cluster announces for it (`CLUSTER SHARDS`).
public struct RedisClusterConfiguration: Sendable, CustomStringConvertible {
    /// Nodes to ask for the cluster's map, in order, until one answers: any node of the cluster, primary or replica.
    /// The other nodes are found from it.
    public var seeds: [RedisConfiguration]
    /// How often the map is fetched again when nothing suggested a change. Redirections, a pushed `sunsubscribe` and
    /// a lost node fetch it at once. Default: 30 s.
    public var topologyRefreshInterval: Duration
    /// How often a ``ClusterSubscriber`` asks each primary holding its sharded channels whether one of their slots is
    /// being migrated (`CLUSTER NODES`, on a command connection of its own per such primary), to subscribe them on
    /// the importing node before the slot flips: then the migration costs no message. A migration shorter than the
    /// interval is not seen, and costs the usual gap. `nil` (the default) turns the watch off.
    public var migrationWatchInterval: Duration?

    /// Creates a configuration from seed configurations.
    public init(seeds: [RedisConfiguration], topologyRefreshInterval: Duration = .seconds(30)) {
        self.seeds = seeds
        self.topologyRefreshInterval = topologyRefreshInterval
    }

    /// Creates a configuration from seed URLs (as ``RedisConfiguration/init(url:)`` parses them).
    ///
    /// - Throws: ``RedisError/Code/invalidConfiguration`` for a URL that does not parse.
    public init(urls: [String], topologyRefreshInterval: Duration = .seconds(30)) throws(RedisError) {
        var seeds: [RedisConfiguration] = []
        for url in urls { seeds.append(try RedisConfiguration(url: url)) }
        self.init(seeds: seeds, topologyRefreshInterval: topologyRefreshInterval)
    }

    /// The seeds, with their passwords masked.
    public var description: String {
        "Redis Cluster (seeds: " + seeds.map(\.description).joined(separator: ", ") + ")"
    }

    /// The connection settings for `node`: the first seed's, at the node's address.
    func configuration(for node: ClusterNodeAddress) -> RedisConfiguration {
        var configuration = seeds[0]
        configuration.endpoint = .tcp(host: node.host, port: node.port)
        return configuration
    }

    /// Whether nodes are reached over TLS (then on their `tls-port`).
    var usesTLS: Bool { seeds.first?.tls != nil }

    func validate() throws(RedisError) {
        guard !seeds.isEmpty else { throw RedisError(.invalidConfiguration, "a cluster configuration needs a seed node") }
        for seed in seeds {
            try seed.validate()
            guard case .tcp = seed.endpoint else {
                throw RedisError(.invalidConfiguration, "cluster seed \(seed) is a Unix socket: cluster nodes are reached over TCP")
            }
            guard seed.database == 0 else {
                throw RedisError(.invalidConfiguration, "cluster seed \(seed) selects database \(seed.database): a Redis Cluster has database 0 only")
            }
        }
        guard topologyRefreshInterval > .zero else {
            throw RedisError(.invalidConfiguration, "topologyRefreshInterval must be positive")
        }
        if let migrationWatchInterval, migrationWatchInterval <= .zero {
            throw RedisError(.invalidConfiguration, "migrationWatchInterval must be positive, or nil to turn the watch off")
        }
    }
}
