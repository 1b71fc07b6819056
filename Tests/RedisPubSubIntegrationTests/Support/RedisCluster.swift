import Foundation
import RedisPubSub
#if canImport(Glibc)
import Glibc
#endif

/// A private Redis Cluster on loopback, started and stopped with `scripts/redis-cluster.sh` (3 primaries with a
/// replica each by default), and the operations the tests do to it: slot migration, failover, killing a node. Node
/// administration goes through `redis-cli`, not the package under test.
final class RedisCluster: @unchecked Sendable {
    // @unchecked Sendable because: `directory` is immutable; `nodes` is read under `lock`.
    let directory: URL
    /// Every node's `requirepass` (and `masterauth`), if any.
    let password: String?
    /// The certificates of a cluster that speaks TLS only (clients, bus and replication), if it does.
    let tls: TestCertificates?
    private let lock = NSLock()
    private var startedPorts: [Int]

    static let script = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("scripts/redis-cluster.sh")

    /// Starts a cluster; `primaries` with `replicas` each, nodes failing over after `nodeTimeout` ms of silence,
    /// every node requiring `password` when one is given, and speaking TLS only with `tls`'s certificates.
    init(primaries: Int = 3, replicas: Int = 1, nodeTimeout: Int = 2000, password: String? = nil, tls: TestCertificates? = nil) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("redis-pubsub-test-cluster-\(UUID().uuidString)")
        self.password = password
        self.tls = tls
        var environment = password.map { Self.environment(password: $0) } ?? [:]
        if let tls { environment["REDIS_CLUSTER_TLS_DIR"] = tls.directory.path }
        let output: String
        do {
            output = try Self.run(
                Self.script.path, ["start", directory.path, "\(primaries)", "\(replicas)", "\(nodeTimeout)"],
                timeout: .seconds(60), environment: environment)
        } catch {
            Self.stop(directory)  // `deinit` does not run for an object whose init threw
            throw error
        }
        startedPorts = output.split(separator: "\n").compactMap { $0.split(separator: ":").last.flatMap { Int($0) } }
        guard startedPorts.count == primaries * (1 + replicas) else {
            stop()
            throw RedisError(.connectionRefused, "the cluster did not start: \(output)")
        }
    }

    /// What `scripts/redis-cluster.sh` needs for a cluster with a password.
    private static func environment(password: String) -> [String: String] {
        ["REDIS_CLUSTER_ARGS": "--requirepass \(password) --masterauth \(password)", "REDIS_CLUSTER_CLI_ARGS": "-a \(password)"]
    }

    private static func stop(_ directory: URL) {
        _ = try? run(script.path, ["stop", directory.path], timeout: .seconds(30))
    }

    deinit { stop() }

    func stop() {
        Self.stop(directory)
    }

    /// Every node's port, in the order they started.
    var ports: [Int] { lock.withLock { startedPorts } }

    /// A seed URL.
    func url(_ port: Int? = nil) -> String {
        (tls == nil ? "redis://" : "rediss://") + (password.map { ":\($0)@" } ?? "") + "127.0.0.1:\(port ?? ports[0])"
    }

    var configuration: RedisClusterConfiguration {
        get throws {
            var seed = try RedisConfiguration(url: url())
            if let tls { seed.tls?.trust = .certificateAuthorityFile(tls.ca) }
            return RedisClusterConfiguration(seeds: [seed])
        }
    }

    // MARK: Administration

    /// Runs `redis-cli -p port args...` and returns its output (trimmed).
    @discardableResult
    func cli(_ port: Int, _ arguments: String...) throws -> String {
        try cli(port, arguments)
    }

    @discardableResult
    func cli(_ port: Int, _ arguments: [String]) throws -> String {
        let auth = (password.map { ["-a", $0, "--no-auth-warning"] } ?? []) + (tls.map { ["--tls", "--cacert", $0.ca] } ?? [])
        return try Self.run(try RedisServer.find("redis-cli").path, ["-h", "127.0.0.1", "-p", "\(port)"] + auth + arguments, timeout: .seconds(20))
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func nodeID(_ port: Int) throws -> String { try cli(port, "cluster", "myid") }

    /// The role of each live node: ports of primaries serving slots, and of replicas.
    func primaries() throws -> [Int] {
        try ports.filter { port in (try? cli(port, "role").hasPrefix("master")) == true && serves(port) }
    }

    private func serves(_ port: Int) -> Bool {
        guard let nodes = try? cli(port, "cluster", "nodes") else { return false }
        return nodes.split(separator: "\n").contains { line in
            line.contains("myself") && line.split(separator: " ").count > 8
        }
    }

    /// The port of the primary serving `slot`, as `port` (or any live node) sees it.
    func owner(ofSlot slot: Int, asSeenBy port: Int? = nil) throws -> Int? {
        try Self.ranges(try cli(port ?? aliveNode(), "cluster", "slots")).first { $0.slots.contains(slot) }?.port
    }

    /// CLUSTER SLOTS as redis-cli prints it (one value per line: first, last, then host, port, id and metadata per
    /// node, primary first), as slot ranges and their primaries' ports.
    private static func ranges(_ slots: String) -> [(slots: ClosedRange<Int>, port: Int)] {
        let lines = slots.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        var ranges: [(slots: ClosedRange<Int>, port: Int)] = []
        var index = 0
        while index + 3 < lines.count {
            if let low = Int(lines[index]), let high = Int(lines[index + 1]), low <= high, lines[index + 2] == "127.0.0.1",
               let port = Int(lines[index + 3])
            {
                ranges.append((low...high, port))
                index += 4
            } else {
                index += 1
            }
        }
        return ranges
    }

    /// A node that answers.
    func aliveNode() throws -> Int {
        guard let port = ports.first(where: { (try? cli($0, "ping")) == "PONG" }) else {
            throw RedisError(.connectionRefused, "no cluster node answers")
        }
        return port
    }

    /// A replica of `primary`.
    func replica(of primary: Int) throws -> Int {
        let id = try nodeID(primary)
        for port in ports where port != primary {
            let info = try? cli(port, "cluster", "nodes")
            if let line = info?.split(separator: "\n").first(where: { $0.contains("myself") }),
               line.split(separator: " ").count > 3, line.split(separator: " ")[3] == id
            {
                return port
            }
        }
        throw RedisError(.invalidArgument, "no replica of \(primary)")
    }

    /// Moves `slot` (holding no keys) from its owner to `target`, as `redis-cli --cluster reshard` does: IMPORTING
    /// on the target, MIGRATING on the source, then NODE on both and the others. `between` runs after the first two
    /// steps (the slot is migrating: the tests subscribe or publish there).
    func migrate(slot: Int, to target: Int, between: () async throws -> Void = {}) async throws {
        guard let source = try owner(ofSlot: slot), source != target else { return }
        let sourceID = try nodeID(source)
        let targetID = try nodeID(target)
        try expectOK(try cli(target, "cluster", "setslot", "\(slot)", "importing", sourceID))
        try expectOK(try cli(source, "cluster", "setslot", "\(slot)", "migrating", targetID))
        try await between()
        try expectOK(try cli(target, "cluster", "setslot", "\(slot)", "node", targetID))
        try expectOK(try cli(source, "cluster", "setslot", "\(slot)", "node", targetID))
        for port in try primaries() where port != source && port != target {
            _ = try? cli(port, "cluster", "setslot", "\(slot)", "node", targetID)
        }
    }

    private func expectOK(_ reply: String) throws {
        guard reply == "OK" else { throw RedisError(.serverError, reply) }
    }

    /// `CLUSTER FAILOVER` on `replica`: it becomes its primary's primary, in agreement with it.
    /// A primary's nodes vote for one failover of its shard per 2 node timeouts: a failover soon after another one
    /// is refused ("majority not reached"), so it is asked again until it happens.
    func failover(to replica: Int) throws {
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            try expectOK(try cli(replica, "cluster", "failover"))
            if (try? waitUntil(timeout: 3, { (try? self.cli(replica, "role").hasPrefix("master")) == true })) != nil { return }
        }
        throw RedisError(.timeout, "the failover to \(replica) did not happen within 30 s")
    }

    /// SIGKILLs the node on `port`.
    func kill(_ port: Int) throws {
        let pidFile = directory.appendingPathComponent("\(port)/redis.pid")
        guard let pid = Int32((try String(contentsOf: pidFile, encoding: .utf8)).trimmingCharacters(in: .whitespacesAndNewlines))
        else { throw RedisError(.invalidArgument, "no pid for \(port)") }
        // Only the node of this cluster: never a process that was given the pid after ours ended.
        let cwd = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/cwd")
        guard cwd == directory.appendingPathComponent("\(port)").resolvingSymlinksInPath().path else {
            throw RedisError(.invalidArgument, "pid \(pid) is not the node on \(port)")
        }
        Glibc.kill(pid, SIGKILL)
        try? FileManager.default.removeItem(at: pidFile)
        try waitUntil(timeout: 10) { (try? self.cli(port, "ping")) != "PONG" }
    }

    /// Starts the node on `port` again with its old cluster configuration (it rejoins, as a replica if it was
    /// failed over).
    func restart(_ port: Int) throws {
        try Self.run(Self.script.path, ["start-node", directory.path, "\(port)"], timeout: .seconds(30))
    }

    /// Waits until every live node reports `cluster_state:ok` and agrees on the owner of every slot.
    func waitUntilSettled(timeout: Double = 30) throws {
        try waitUntil(timeout: timeout) {
            let live = self.ports.filter { (try? self.cli($0, "ping")) == "PONG" }
            guard !live.isEmpty else { return false }
            var maps = Set<String>()
            for port in live {
                guard let info = try? self.cli(port, "cluster", "info"), info.contains("cluster_state:ok"),
                      let slots = try? self.cli(port, "cluster", "slots")
                else { return false }
                maps.insert(Self.ownersOnly(slots))
            }
            return maps.count == 1
        }
    }

    private static func ownersOnly(_ slots: String) -> String {
        ranges(slots).map { "\($0.slots) \($0.port)" }.sorted().joined(separator: "\n")
    }

    func waitUntil(timeout: Double, _ condition: () -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition() { return }
            usleep(50_000)
        }
        throw RedisError(.timeout, "the cluster did not reach the expected state within \(timeout) s")
    }

    // MARK: Processes

    @discardableResult
    static func run(_ tool: String, _ arguments: [String], timeout: Duration, environment: [String: String] = [:]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = arguments
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        // Output into a file, read after the exit: reading a pipe to its end first would wait past the timeout.
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("redis-pubsub-cli-\(UUID().uuidString)")
        FileManager.default.createFile(atPath: file.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: file) }
        let handle = try FileHandle(forWritingTo: file)
        defer { try? handle.close() }
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        guard let status = process.waitForExit(timeout: timeout) else {
            Glibc.kill(process.processIdentifier, SIGKILL)
            process.waitForExit()
            throw RedisError(.timeout, "\(tool) \(arguments.joined(separator: " ")) did not finish")
        }
        let text = (try? String(contentsOf: file, encoding: .utf8)) ?? ""
        guard status == 0 else { throw RedisError(.serverError, "\(tool) \(arguments.first ?? "") failed (\(status)): \(text)") }
        return text
    }
}
