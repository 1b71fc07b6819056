/// A cluster node's answer that a command belongs elsewhere: `-MOVED slot host:port` (the slot lives there now) or
/// `-ASK slot host:port` (being migrated there: send `ASKING` first, once).
struct ClusterRedirection: Equatable {
    let ask: Bool
    let slot: Int
    let node: ClusterNodeAddress

    /// Parses an error reply's text; `nil` when it is not a redirection.
    init?(_ message: String) {
        let parts = message.split(separator: " ")
        guard parts.count == 3, parts[0] == "MOVED" || parts[0] == "ASK", let slot = Int(parts[1]),
              (0..<ClusterSlot.count).contains(slot), let node = ClusterNodeAddress(redirection: parts[2])
        else { return nil }
        self.ask = parts[0] == "ASK"
        self.slot = slot
        self.node = node
    }

    /// Errors of a cluster in the middle of a change (`CLUSTERDOWN`, `TRYAGAIN`, `LOADING`, `MASTERDOWN`): worth
    /// another try once the map settles.
    static func isTransient(_ message: String) -> Bool {
        message.hasPrefix("CLUSTERDOWN") || message.hasPrefix("TRYAGAIN") || message.hasPrefix("LOADING")
            || message.hasPrefix("MASTERDOWN")
    }
}
