/// A cluster node's address as the cluster announces it.
struct ClusterNodeAddress: Hashable, Sendable, Comparable, CustomStringConvertible {
    let host: String
    let port: Int

    var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    static func < (a: Self, b: Self) -> Bool { (a.host, a.port) < (b.host, b.port) }

    /// Parses `host:port` (the address of a `-MOVED`/`-ASK` redirection; IPv6 hosts without brackets).
    init?(redirection text: Substring) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
              (1...65535).contains(port)
        else { return nil }
        var host = text[..<colon]
        if host.hasPrefix("["), host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        guard !host.isEmpty else { return nil }
        self.init(host: String(host), port: port)
    }

    init(host: String, port: Int) {
        self.host = host
        self.port = port
    }
}

/// Which primary serves each of the 16384 hash slots, and the replicas of each primary: from `CLUSTER SHARDS`
/// (Redis 7) or `CLUSTER SLOTS`, corrected by `-MOVED` redirections between refreshes. A value.
struct ClusterTopology: Sendable, Equatable {
    struct Shard: Sendable, Equatable {
        var primary: ClusterNodeAddress
        var replicas: [ClusterNodeAddress]
        var slots: [ClosedRange<Int>]
    }

    private(set) var shards: [Shard]
    /// The index in `shards` of each slot's owner; -1 for a slot nobody serves.
    private var owners: [Int16]

    init(shards: [Shard]) {
        self.shards = shards
        owners = Array(repeating: -1, count: ClusterSlot.count)
        for (index, shard) in shards.enumerated() {
            for range in shard.slots {
                for slot in range where slot >= 0 && slot < ClusterSlot.count { owners[slot] = Int16(index) }
            }
        }
    }

    /// The primary serving `slot`, if the map knows one.
    func primary(ofSlot slot: Int) -> ClusterNodeAddress? {
        let index = owners[slot]
        return index < 0 ? nil : shards[Int(index)].primary
    }

    /// The primaries that serve at least one slot, in address order.
    var primaries: [ClusterNodeAddress] {
        Set(owners.filter { $0 >= 0 }).map { shards[Int($0)].primary }.sorted()
    }

    /// Every node the map names, primaries first.
    var nodes: [ClusterNodeAddress] {
        let primaries = self.primaries
        let replicas = shards.flatMap(\.replicas).filter { !primaries.contains($0) }
        var seen = Set<ClusterNodeAddress>()
        return (primaries + shards.map(\.primary) + replicas).filter { seen.insert($0).inserted }
    }

    /// Whether every slot has an owner.
    var coversEverySlot: Bool { !owners.contains(-1) }

    /// A `-MOVED slot node` answer: `node` serves `slot` now.
    mutating func redirect(slot: Int, to node: ClusterNodeAddress) {
        guard slot >= 0 && slot < ClusterSlot.count else { return }
        if let index = shards.firstIndex(where: { $0.primary == node }) {
            owners[slot] = Int16(index)
        } else {
            shards.append(Shard(primary: node, replicas: [], slots: []))
            owners[slot] = Int16(shards.count - 1)
        }
    }

    // MARK: Parsing

    /// Parses a `CLUSTER SHARDS` reply (RESP2: each shard and each node a flat list of names and values). With `tls`,
    /// nodes are reached on their `tls-port`.
    static func parse(shards reply: RedisValue, tls: Bool) throws(RedisError) -> ClusterTopology {
        guard case .array(let entries) = reply else { throw malformed("CLUSTER SHARDS", reply) }
        var shards: [Shard] = []
        for entry in entries {
            let fields = try fields(entry, "CLUSTER SHARDS")
            guard case .array(let bounds)? = fields["slots"], case .array(let nodes)? = fields["nodes"] else {
                throw malformed("CLUSTER SHARDS", entry)
            }
            var slots: [ClosedRange<Int>] = []
            var index = 0
            while index + 1 < bounds.count {
                guard case .integer(let low) = bounds[index], case .integer(let high) = bounds[index + 1], low <= high
                else { throw malformed("CLUSTER SHARDS", entry) }
                slots.append(low...high)
                index += 2
            }
            var primary: ClusterNodeAddress?
            var replicas: [ClusterNodeAddress] = []
            for node in nodes {
                let fields = try self.fields(node, "CLUSTER SHARDS")
                guard let address = address(fields, tls: tls) else { continue }
                if fields["role"]?.string == "master" { primary = address } else { replicas.append(address) }
            }
            guard let primary else { continue }  // a shard whose primary is unknown: its slots stay unserved
            shards.append(Shard(primary: primary, replicas: replicas, slots: slots))
        }
        return ClusterTopology(shards: shards)
    }

    /// Parses a `CLUSTER SLOTS` reply (before Redis 7): `[first, last, [host, port, id, ...] primary, replicas...]`.
    static func parse(slots reply: RedisValue) throws(RedisError) -> ClusterTopology {
        guard case .array(let ranges) = reply else { throw malformed("CLUSTER SLOTS", reply) }
        var shards: [Shard] = []
        for range in ranges {
            guard case .array(let parts) = range, parts.count >= 3,
                  case .integer(let low) = parts[0], case .integer(let high) = parts[1], low <= high
            else { throw malformed("CLUSTER SLOTS", range) }
            let nodes = parts[2...].compactMap { part -> ClusterNodeAddress? in
                guard case .array(let node) = part, node.count >= 2, let host = node[0].string, !host.isEmpty,
                      host != "?", case .integer(let port) = node[1], port > 0
                else { return nil }
                return ClusterNodeAddress(host: host, port: port)
            }
            guard let primary = nodes.first else { continue }
            if let index = shards.firstIndex(where: { $0.primary == primary }) {
                shards[index].slots.append(low...high)
            } else {
                shards.append(Shard(primary: primary, replicas: Array(nodes.dropFirst()), slots: [low...high]))
            }
        }
        return ClusterTopology(shards: shards)
    }

    private static func fields(_ value: RedisValue, _ command: String) throws(RedisError) -> [String: RedisValue] {
        guard case .array(let items) = value, items.count % 2 == 0 else { throw malformed(command, value) }
        var fields: [String: RedisValue] = [:]
        var index = 0
        while index < items.count {
            guard let name = items[index].string else { throw malformed(command, value) }
            fields[name] = items[index + 1]
            index += 2
        }
        return fields
    }

    /// The address to reach a node at: its announced endpoint (`cluster-preferred-endpoint-type`), else its IP.
    private static func address(_ fields: [String: RedisValue], tls: Bool) -> ClusterNodeAddress? {
        let usable = { (value: RedisValue?) -> String? in
            guard let text = value?.string, !text.isEmpty, text != "?" else { return nil }
            return text
        }
        guard let host = usable(fields["endpoint"]) ?? usable(fields["ip"]) else { return nil }
        let portField = tls ? (fields["tls-port"] ?? fields["port"]) : (fields["port"] ?? fields["tls-port"])
        guard case .integer(let port)? = portField, port > 0 else { return nil }
        return ClusterNodeAddress(host: host, port: port)
    }

    private static func malformed(_ command: String, _ value: RedisValue) -> RedisError {
        RedisError(.protocolError, "unexpected \(command) reply: \(value.shape)")
    }
}
