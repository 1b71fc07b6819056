import Logging

/// Fetches a cluster's map (`CLUSTER SHARDS`, or `CLUSTER SLOTS` before Redis 7) from one of its nodes, over a
/// command connection it keeps to the last node that answered. Nodes are tried in turn: that one, the primaries and
/// replicas of the last map, then the seeds; each gets at most ``attemptTimeout`` to connect and answer.
actor ClusterTopologySource {
    let configuration: RedisClusterConfiguration
    private let logger: Logger
    private var connection: (node: ClusterNodeAddress, connection: RedisConnection)?
    /// Nodes of the last map, to ask next time.
    private var known: [ClusterNodeAddress] = []
    private var usesShards = true
    private var closed = false

    init(configuration: RedisClusterConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    /// A source and the first map it fetched (closed again when none could be fetched): how both cluster clients
    /// start.
    static func start(_ configuration: RedisClusterConfiguration, logger: Logger) async throws(RedisError)
        -> (ClusterTopologySource, ClusterTopology)
    {
        let source = ClusterTopologySource(configuration: configuration, logger: logger)
        do {
            return (source, try await source.fetch())
        } catch {
            await source.close()
            throw error
        }
    }

    /// How long one node gets to connect and answer.
    var attemptTimeout: Duration {
        min(configuration.seeds[0].connectTimeout, configuration.seeds[0].commandTimeout, .seconds(2))
    }

    /// The current map. `avoiding` are nodes known to be down right now: asked last.
    func fetch(avoiding down: Set<ClusterNodeAddress> = []) async throws(RedisError) -> ClusterTopology {
        if closed { throw RedisError(.connectionClosed, "the cluster client was closed") }
        var failures: [String] = []
        if let (node, current) = connection {
            do throws(RedisError) {
                return try await ask(current)
            } catch let error where error.code == .invalidConfiguration {
                throw error
            } catch {
                failures.append("\(node): \(error.message)")
                connection = nil
                Task { await current.close() }
            }
        }
        let seeds = configuration.seeds.compactMap { seed -> ClusterNodeAddress? in
            guard case .tcp(let host, let port) = seed.endpoint else { return nil }
            return ClusterNodeAddress(host: host, port: port)
        }
        var seen = Set<ClusterNodeAddress>()
        let candidates = (known + seeds).filter { seen.insert($0).inserted }
        let ordered = candidates.filter { !down.contains($0) } + candidates.filter { down.contains($0) }
        for node in ordered {
            if closed { throw RedisError(.connectionClosed, "the cluster client was closed") }
            var settings = configuration.configuration(for: node)
            if let seed = configuration.seeds.first(where: { $0.endpoint == settings.endpoint }) { settings = seed }
            settings.connectTimeout = attemptTimeout
            settings.commandTimeout = attemptTimeout
            settings.reconnect = .disabled
            let opened: RedisConnection
            do throws(RedisError) {
                opened = try await RedisConnection.connect(to: settings, logger: logger)
            } catch let error where error.code == .authenticationFailed || error.code == .invalidConfiguration {
                throw error  // every node has the same settings: another one would refuse them too
            } catch {
                failures.append("\(node): \(error.message)")
                continue
            }
            do throws(RedisError) {
                let map = try await ask(opened)
                if closed {
                    await opened.close()
                    throw RedisError(.connectionClosed, "the cluster client was closed")
                }
                connection = (node, opened)
                return map
            } catch let error where error.code == .invalidConfiguration {
                await opened.close()
                throw error
            } catch {
                failures.append("\(node): \(error.message)")
                await opened.close()
            }
        }
        throw RedisError(
            .connectionClosed, "no cluster node answered for the cluster map (" + failures.joined(separator: "; ") + ")")
    }

    private func ask(_ connection: RedisConnection) async throws(RedisError) -> ClusterTopology {
        let map: ClusterTopology
        if usesShards {
            do throws(RedisError) {
                map = try ClusterTopology.parse(
                    shards: try await connection.send(["CLUSTER", "SHARDS"]), tls: configuration.usesTLS)
            } catch let error where error.code == .serverError && error.message.contains("unknown subcommand") {
                usesShards = false  // before Redis 7
                return try await ask(connection)
            } catch let error where error.code == .serverError && error.message.contains("cluster support disabled") {
                throw Self.notACluster(connection)
            }
        } else {
            do throws(RedisError) {
                map = try ClusterTopology.parse(slots: try await connection.send(["CLUSTER", "SLOTS"]))
            } catch let error where error.code == .serverError && error.message.contains("cluster support disabled") {
                throw Self.notACluster(connection)
            }
        }
        guard !map.shards.isEmpty else {
            throw RedisError(.serverError, "the cluster map is empty (the cluster is not set up yet)")
        }
        // A node removed from the cluster (`del-node` resets it) knows only itself, without slots: its map would
        // send every channel nowhere. Another node is asked instead.
        guard !map.primaries.isEmpty else {
            throw RedisError(.serverError, "the node knows no slot's owner (removed from the cluster, or not set up yet)")
        }
        known = map.nodes
        return map
    }

    private static func notACluster(_ connection: RedisConnection) -> RedisError {
        RedisError(
            .invalidConfiguration,
            "\(connection.configuration) is not a Redis Cluster node (cluster support disabled): use Subscriber and "
                + "Publisher for a single server")
    }

    /// Closes the connection; fetches after this fail.
    func close() async {
        closed = true
        let current = connection?.connection
        connection = nil
        await current?.close()
    }
}
