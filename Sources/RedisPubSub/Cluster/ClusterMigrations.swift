/// The slots a cluster node is migrating away right now, read from its `CLUSTER NODES` text: the node's own line
/// (flagged `myself`) lists each as `[slot->-target-id]`, and the target's own line gives its address. Nothing else
/// tells a client that a migration is under way (`CLUSTER SHARDS` and `CLUSTER SLOTS` show owners only).
enum ClusterMigrations {
    /// Each slot the node migrates, with the address of the node importing it: its `ip:port`, or `hostname:port`
    /// when it announces a host name and `known` (the map's nodes) names it so.
    static func parse(clusterNodes text: String, known: [ClusterNodeAddress] = []) -> [Int: ClusterNodeAddress] {
        var addresses: [Substring: ClusterNodeAddress] = [:]
        var migrating: [(slot: Int, target: Substring)] = []
        for line in text.split(whereSeparator: \.isNewline) {
            let fields = line.split(separator: " ")
            guard fields.count >= 8 else { continue }
            // `ip:port@cport[,hostname]`: the client address is before the `@`.
            let parts = fields[1].split(separator: ",", maxSplits: 1)
            if let address = parts.first?.split(separator: "@").first.flatMap({ ClusterNodeAddress(redirection: $0) }) {
                let named = parts.count > 1 && !parts[1].isEmpty
                    ? ClusterNodeAddress(host: String(parts[1]), port: address.port) : nil
                addresses[fields[0]] = named.map { known.contains($0) && !known.contains(address) } == true ? named : address
            }
            guard fields[2].split(separator: ",").contains("myself") else { continue }
            for field in fields.dropFirst(8) where field.hasPrefix("[") && field.hasSuffix("]") {
                let inner = field.dropFirst().dropLast()
                guard let arrow = inner.firstRange(of: "->-"), let slot = Int(inner[..<arrow.lowerBound]) else { continue }
                migrating.append((slot, inner[arrow.upperBound...]))
            }
        }
        var result: [Int: ClusterNodeAddress] = [:]
        for (slot, target) in migrating where (0..<ClusterSlot.count).contains(slot) {
            if let address = addresses[target] { result[slot] = address }
        }
        return result
    }
}
