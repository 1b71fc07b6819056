import ArgumentParser
import Foundation

/// Runs the whole suite against a private redis-server, alternating the C baseline and this package, and prints a
/// table of medians with the ratio to C.
struct Compare: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Starts a private redis-server and runs every workload, C and Swift alternately; prints medians.")

    @Option(help: "Alternating C/Swift pairs per workload (medians are reported).")
    var runs = 3

    @Option(help: "Multiplies every message count (0.1 for a quick look).")
    var scale = 1.0

    @Flag(help: "Only the rows comparing a Redis Cluster with one node.")
    var clusterOnly = false

    @Flag(help: "Only the Redis Streams rows (appends, consumer groups).")
    var streamsOnly = false

    func run() async throws {
        let certificates = try Self.makeCertificates()
        defer { try? FileManager.default.removeItem(atPath: certificates) }
        let server = try PrivateRedis.start(certificates: certificates)
        defer { server.stop() }
        let url = "redis://127.0.0.1:\(server.port)"
        let tlsURL = "rediss://127.0.0.1:\(server.tlsPort)"
        let caFile = certificates + "/ca.crt"
        let bench = try Self.executablePath()
        let started = Date()
        var rows: [Row] = []
        func count(_ base: Int) -> Int { max(1000, Int(Double(base) * scale)) }
        if clusterOnly {
            printClusterTable(try await clusterRows(bench, url, count: count))
            return
        }
        if streamsOnly {
            printTable(try await streamRows(bench, url, count: count), server: server, started: started)
            return
        }

        // Subscriber throughput and CPU: the same C publisher (1,000 in flight) feeds either subscriber.
        for (size, messages) in [(16, 1_000_000), (64, 1_000_000), (1024, 500_000), (65536, 20_000)] {
            var rates: [Engine: [Double]] = [:], cpu: [Engine: [Double]] = [:]
            for run in 0..<runs {
                for engine in run % 2 == 0 ? [Engine.c, .swift] : [.swift, .c] {
                    let sample = try await subscriberRun(bench, url, engine: engine, size: size, count: count(messages))
                    rates[engine, default: []].append(sample.rate)
                    cpu[engine, default: []].append(sample.cpuPerMillion)
                }
            }
            rows.append(Row("subscriber, \(size) B payloads", "msgs/s", rates, higherIsBetter: true))
            rows.append(Row("subscriber CPU, \(size) B payloads", "CPU s per 1M msgs", cpu, higherIsBetter: false))
        }

        // Subscriber over TLS: the same C publisher (plaintext) feeds a TLS subscriber: C (OpenSSL and hiredis's
        // reader, blocking), this package over TLS, and this package over plaintext, rotating the order per run.
        var tlsCost: [String] = []
        for (size, messages) in [(64, 1_000_000), (1024, 500_000), (65536, 20_000)] {
            var rates: [Engine: [Double]] = [:], cpu: [Engine: [Double]] = [:]
            var plainRates: [Double] = [], plainCPU: [Double] = []
            let orders: [[String]] = [["c", "tls", "plain"], ["tls", "plain", "c"], ["plain", "c", "tls"]]
            for run in 0..<runs {
                for kind in orders[run % 3] {
                    let sample = try await subscriberRun(
                        bench, kind == "plain" ? url : tlsURL, engine: kind == "c" ? .c : .swift, size: size,
                        count: count(messages), publishURL: url, caFile: caFile)
                    switch kind {
                    case "plain":
                        plainRates.append(sample.rate)
                        plainCPU.append(sample.cpuPerMillion)
                    default:
                        let engine: Engine = kind == "c" ? .c : .swift
                        rates[engine, default: []].append(sample.rate)
                        cpu[engine, default: []].append(sample.cpuPerMillion)
                    }
                }
            }
            rows.append(Row("subscriber over TLS, \(size) B payloads (C: OpenSSL + hiredis reader)", "msgs/s", rates, higherIsBetter: true))
            rows.append(Row("subscriber CPU over TLS, \(size) B payloads", "CPU s per 1M msgs", cpu, higherIsBetter: false))
            let tls = median(rates[.swift] ?? []), plain = median(plainRates)
            let tlsCPU = median(cpu[.swift] ?? []), plainCPUMedian = median(plainCPU)
            tlsCost.append(
                "| \(size) B | \(format(plain)) | \(format(tls)) | \(String(format: "%.2fx", tls / plain)) | "
                    + "\(format(plainCPUMedian)) | \(format(tlsCPU)) |")
        }

        // Publisher throughput, no subscribers. The target row: Swift tasks on the default executor against C with
        // 1,000 commands in flight. The others separate where the difference comes from: the executor the tasks run
        // on, and how many commands are in flight (a task has at most one).
        typealias PublisherRun = (label: String, tasks: Int, executor: ExecutorChoice, batch: Int, cInFlight: Int, messages: Int)
        let publisherRuns: [PublisherRun] = [
            ("Swift 1 task vs C 1 in flight", 1, .global, 1, 1, 50_000),
            ("Swift 100 tasks vs C 1,000 in flight", 100, .global, 1, 1000, 1_000_000),
            ("Swift 100 tasks on taskExecutor vs C 1,000 in flight", 100, .loop, 1, 1000, 1_000_000),
            ("Swift 100 tasks on taskExecutor vs C 100 in flight", 100, .loop, 1, 100, 1_000_000),
            ("Swift 1,000 tasks on taskExecutor vs C 1,000 in flight", 1000, .loop, 1, 1000, 1_000_000),
            ("Swift 100 tasks, publish(contentsOf:) batches of 10, vs C 1,000 in flight", 100, .global, 10, 1000, 1_000_000),
            ("Swift 10 tasks, publish(contentsOf:) batches of 100, vs C 1,000 in flight", 10, .global, 100, 1000, 1_000_000),
        ]
        for publisherRun in publisherRuns {
            var rates: [Engine: [Double]] = [:]
            for run in 0..<runs {
                for engine in run % 2 == 0 ? [Engine.c, .swift] : [.swift, .c] {
                    let output = try await Child.run(bench, [
                        "publish", "--url", url, "--channel", "nobody", "--engine", engine.rawValue,
                        "--count", "\(count(publisherRun.messages))", "--size", "64",
                        "--concurrency", "\(engine == .c ? publisherRun.cInFlight : publisherRun.tasks)",
                        "--executor", publisherRun.executor.rawValue, "--batch", "\(publisherRun.batch)",
                    ])
                    rates[engine, default: []].append(try Self.rate(output, "published"))
                }
            }
            rows.append(Row("publisher, 64 B, \(publisherRun.label)", "msgs/s", rates, higherIsBetter: true))
        }

        // Fan-out: one connection, 50 subscriptions (Swift) or 50 counters per message (C).
        do {
            var rates: [Engine: [Double]] = [:]
            for run in 0..<runs {
                for engine in run % 2 == 0 ? [Engine.c, .swift] : [.swift, .c] {
                    let sample = try await subscriberRun(bench, url, engine: engine, size: 64, count: count(200_000), fanout: 50)
                    rates[engine, default: []].append(sample.rate * 50)
                }
            }
            rows.append(Row("fan-out to 50 subscriptions on one connection", "deliveries/s", rates, higherIsBetter: true))
        }

        // Publish-to-receive latency at a fixed rate from the C paced publisher; the Swift consumer on the default
        // executor, then on the subscriber's taskExecutor.
        // Tail percentiles on a shared machine swing with every scheduling hiccup: these rows take at least 5 pairs.
        for (rate, executor) in [(10_000, ExecutorChoice.global), (100_000, .global), (10_000, .loop), (100_000, .loop)] {
            var p50: [Engine: [Double]] = [:], p99: [Engine: [Double]] = [:], p999: [Engine: [Double]] = [:]
            for run in 0..<max(runs, 5) {
                for engine in run % 2 == 0 ? [Engine.c, .swift] : [.swift, .c] {
                    // At least 100k samples: in a shorter run, the start-up's few milliseconds alone make the p99.
                    let sample = try await subscriberRun(
                        bench, url, engine: engine, size: 64, count: count(max(rate * 2, 100_000)), pacedRate: rate,
                        executor: executor)
                    p50[engine, default: []].append(sample.latency?.p50 ?? .nan)
                    p99[engine, default: []].append(sample.latency?.p99 ?? .nan)
                    p999[engine, default: []].append(sample.latency?.p999 ?? .nan)
                }
            }
            let label = "at \(rate / 1000)k msgs/s" + (executor == .loop ? ", Swift consumer on taskExecutor" : "")
            rows.append(Row("latency p50 \(label)", "µs", p50, higherIsBetter: false))
            rows.append(Row("latency p99 \(label)", "µs", p99, higherIsBetter: false))
            rows.append(Row("latency p99.9 \(label)", "µs", p999, higherIsBetter: false))
        }

        rows += try await streamRows(bench, url, count: count)

        // Memory: a burst into a stalled consumer, with the default bounded policy and with an unbounded one.
        var memory: [String] = []
        for policy in ["default", "unbounded"] {
            let output = try await Child.run(bench, [
                "burst", "--url", url, "--channel", "burst-\(policy)", "--count", "\(count(1_000_000))", "--policy", policy,
            ])
            memory.append(output.split(separator: "\n").first { $0.hasPrefix("burst ") }.map(String.init) ?? output)
        }

        // Redis Cluster against one node, this package on both sides: a sharded subscriber fed across 3 primaries,
        // and SPUBLISH from 100 tasks through one ClusterPublisher, against the same work on the single server.
        let clusterRows = try await clusterRows(bench, url, count: count)

        printTable(rows, server: server, started: started)
        print("")
        print("Memory (Swift only; the consumer stalls until the burst is over):")
        for line in memory { print("- " + line) }
        print("")
        print("TLS against plaintext (Swift subscriber, same run, same C publisher):")
        print("")
        print("| payload | plaintext msgs/s | TLS msgs/s | TLS / plaintext | plaintext CPU s per 1M | TLS CPU s per 1M |")
        print("|---|---:|---:|---:|---:|---:|")
        for line in tlsCost { print(line) }
        printClusterTable(clusterRows)
    }

    private func printTable(_ rows: [Row], server: PrivateRedis, started: Date) {
        let elapsed = Date().timeIntervalSince(started)
        print("")
        print("pubsub-bench compare: \(runs) alternating pair(s) per row (latency rows: \(max(runs, 5))), medians; redis-server \(server.version) on loopback; "
            + "\(ProcessInfo.processInfo.activeProcessorCount) cores; \(Int(elapsed)) s; scale \(scale)")
        print("")
        print("| workload | unit | raw hiredis (C) | RedisPubSub (Swift) | Swift / C |")
        print("|---|---|---:|---:|---:|")
        for row in rows { print(row.markdown) }
    }

    /// Redis Streams: appends at equal pipeline depth (Swift tasks, or batches, against C commands in flight), and
    /// a consumer group read and acknowledged (StreamConsumer with a prefetch of 100 against XREADGROUP COUNT 100
    /// with pipelined XACK), each engine with a group of its own over the same prefilled stream.
    private func streamRows(_ bench: String, _ url: String, count: (Int) -> Int) async throws -> [Row] {
        var rows: [Row] = []
        typealias AppendRun = (label: String, tasks: Int, batch: Int, cInFlight: Int, messages: Int)
        let appendRuns: [AppendRun] = [
            ("Swift 100 tasks vs C 100 in flight", 100, 1, 100, 300_000),
            ("Swift 10 tasks, append(contentsOf:) batches of 100, vs C 1,000 in flight", 10, 100, 1000, 300_000),
        ]
        for appendRun in appendRuns {
            var rates: [Engine: [Double]] = [:]
            for run in 0..<runs {
                for engine in run % 2 == 0 ? [Engine.c, .swift] : [.swift, .c] {
                    let output = try await Child.run(bench, [
                        "publish", "--stream", "--url", url, "--channel", "append-\(UUID().uuidString.prefix(8))",
                        "--engine", engine.rawValue, "--count", "\(count(appendRun.messages))", "--size", "64",
                        "--concurrency", "\(engine == .c ? appendRun.cInFlight : appendRun.tasks)",
                        "--batch", "\(appendRun.batch)",
                    ])
                    rates[engine, default: []].append(try Self.rate(output, "published"))
                }
            }
            rows.append(Row("stream append (XADD), 64 B, \(appendRun.label)", "entries/s", rates, higherIsBetter: true))
        }
        for (size, entries, executor) in [(64, 300_000, ExecutorChoice.global), (64, 300_000, .loop), (1024, 200_000, .global)] {
            let stream = "consume-\(size)-\(UUID().uuidString.prefix(8))"
            let total = count(entries)
            _ = try await Child.run(bench, [
                "publish", "--stream", "--url", url, "--channel", stream, "--engine", "c", "--count", "\(total)",
                "--size", "\(size)", "--concurrency", "1000",
            ])
            var rates: [Engine: [Double]] = [:], cpu: [Engine: [Double]] = [:]
            for run in 0..<runs {
                for engine in run % 2 == 0 ? [Engine.c, .swift] : [.swift, .c] {
                    let output = try await Child.run(bench, [
                        "consume", "--url", url, "--channel", stream, "--group", "\(engine.rawValue)-\(run)",
                        "--engine", engine.rawValue, "--count", "\(total)", "--batch", "100", "--executor", executor.rawValue,
                    ])
                    rates[engine, default: []].append(try Self.rate(output, "received"))
                    cpu[engine, default: []].append(try Self.number(after: "cpu ", in: output) / Double(total) * 1_000_000)
                }
            }
            let on = executor == .loop ? ", Swift consumer on taskExecutor" : ""
            rows.append(Row("stream consumer group, \(size) B\(on): read + ack, prefetch 100 (C: XREADGROUP COUNT 100 + pipelined XACK)", "entries/s", rates, higherIsBetter: true))
            rows.append(Row("stream consumer group CPU, \(size) B\(on)", "CPU s per 1M entries", cpu, higherIsBetter: false))
        }
        return rows
    }

    private func printClusterTable(_ rows: [String]) {
        print("")
        print("Redis Cluster (3 primaries, no replicas, on the same machine) against one node, this package on both "
            + "(\(runs) alternating pair(s), medians):")
        print("")
        print("| workload | unit | one node | cluster | cluster / one node |")
        print("|---|---|---:|---:|---:|")
        for line in rows { print(line) }
    }

    // MARK: Cluster against one node

    private func clusterRows(_ bench: String, _ url: String, count: (Int) -> Int) async throws -> [String] {
        let cluster = try PrivateCluster.start(script: Self.scriptPath("redis-cluster.sh"))
        defer { cluster.stop() }
        let seed = "redis://127.0.0.1:\(cluster.primaries[0])"
        // One sharded channel per primary, and the port of the primary it lives on.
        let shards = try cluster.primaries.enumerated().map { index, port in
            (name: try cluster.channel(ownedBy: port, prefix: "bench-shard-\(index)"), port: port)
        }
        let shardArguments = shards.flatMap { ["--shard-channel", $0.name] }
        var rows: [String] = []
        func row(_ name: String, _ unit: String, _ single: [Double], _ clustered: [Double]) {
            let one = median(single), many = median(clustered)
            rows.append("| \(name) | \(unit) | \(format(one)) | \(format(many)) | \(String(format: "%.2fx", many / one)) |")
        }

        // Subscriber: three C publishers (SPUBLISH, 300 in flight each), one per channel, all at once; on one node
        // they all feed the same server, in the cluster each feeds its channel's primary.
        for (size, messages) in [(64, 1_000_000), (1024, 300_000)] {
            let total = count(messages) / 3 * 3
            var single: [Double] = [], clustered: [Double] = []
            for run in 0..<runs {
                for clusterMode in run % 2 == 0 ? [false, true] : [true, false] {
                    let subscriber = try Child(bench, [
                        "subscribe", "--url", clusterMode ? seed : url, "--count", "\(total)",
                    ] + shardArguments + (clusterMode ? ["--cluster"] : []))
                    try await subscriber.waitForLine(containing: "ready")
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        for shard in shards {
                            let target = clusterMode ? "redis://127.0.0.1:\(shard.port)" : url
                            group.addTask {
                                _ = try await Child.run(bench, [
                                    "publish", "--url", target, "--engine", "c", "--shard-channel", shard.name,
                                    "--count", "\(total / 3)", "--size", "\(size)", "--concurrency", "300",
                                ])
                            }
                        }
                        try await group.waitForAll()
                    }
                    let rate = try Self.rate(try await subscriber.finish(), "received")
                    if clusterMode { clustered.append(rate) } else { single.append(rate) }
                }
            }
            row("sharded subscriber, \(size) B, 3 channels (one per primary)", "msgs/s", single, clustered)
        }

        // Publisher: 100 tasks taking the three channels in turn, one SPUBLISH per call.
        var single: [Double] = [], clustered: [Double] = []
        for run in 0..<runs {
            for clusterMode in run % 2 == 0 ? [false, true] : [true, false] {
                let output = try await Child.run(bench, [
                    "publish", "--url", clusterMode ? seed : url, "--count", "\(count(1_000_000))", "--size", "64",
                    "--concurrency", "100",
                ] + shardArguments + (clusterMode ? ["--cluster"] : []))
                let rate = try Self.rate(output, "published")
                if clusterMode { clustered.append(rate) } else { single.append(rate) }
            }
        }
        row("SPUBLISH, 64 B, 100 tasks over 3 channels (one per primary)", "msgs/s", single, clustered)
        return rows
    }

    // MARK: One subscriber run

    struct SubscriberSample {
        var rate: Double
        var cpuPerMillion: Double
        var latency: (p50: Double, p99: Double, p999: Double)?
    }

    /// `url` is the subscriber's; the publisher uses `publishURL` (default: the same). `caFile` is passed along.
    private func subscriberRun(
        _ bench: String, _ url: String, engine: Engine, size: Int, count: Int, fanout: Int = 1, pacedRate: Int? = nil,
        executor: ExecutorChoice = .global, publishURL: String? = nil, caFile: String? = nil
    ) async throws -> SubscriberSample {
        let channel = "bench-\(UUID().uuidString.prefix(8))"
        var arguments = ["subscribe", "--url", url, "--channel", channel, "--engine", engine.rawValue,
                         "--count", "\(count)", "--fanout", "\(fanout)", "--executor", executor.rawValue]
        if pacedRate != nil { arguments.append("--latency") }
        if let caFile { arguments += ["--tls-ca-file", caFile] }
        let url = publishURL ?? url
        let subscriber = try Child(bench, arguments)
        try await subscriber.waitForLine(containing: "ready")
        let publisherArguments: [String]
        if let pacedRate {
            publisherArguments = ["publish-paced", "--url", url, "--channel", channel, "--count", "\(count)",
                                  "--rate", "\(pacedRate)", "--size", "\(size)"]
        } else {
            publisherArguments = ["publish", "--url", url, "--channel", channel, "--engine", "c", "--count", "\(count)",
                                  "--size", "\(size)", "--concurrency", "1000"]
        }
        _ = try await Child.run(bench, publisherArguments)
        let output = try await subscriber.finish()
        let rate = try Self.rate(output, "received")
        let cpu = try Self.number(after: "cpu ", in: output)
        var sample = SubscriberSample(rate: rate, cpuPerMillion: cpu / Double(count) * 1_000_000)
        if pacedRate != nil {
            sample.latency = (try Self.number(after: "p50 ", in: output), try Self.number(after: "p99 ", in: output),
                              try Self.number(after: "p99.9 ", in: output))
        }
        return sample
    }

    // MARK: Parsing

    /// Messages per second from a `received|published N messages in S s` line.
    static func rate(_ output: String, _ verb: String) throws -> Double {
        guard let line = output.split(separator: "\n").first(where: { $0.hasPrefix(verb + " ") }) else {
            throw ValidationError("no `\(verb)` line in: \(output)")
        }
        let words = line.split(separator: " ")
        guard words.count >= 6, let messages = Double(words[1]), let seconds = Double(words[4]), seconds > 0 else {
            throw ValidationError("cannot read: \(line)")
        }
        return messages / seconds
    }

    static func number(after prefix: String, in output: String) throws -> Double {
        guard let range = output.range(of: prefix) else { throw ValidationError("no `\(prefix)` in: \(output)") }
        let digits = output[range.upperBound...].prefix { $0.isNumber || $0 == "." }
        guard let value = Double(digits) else { throw ValidationError("cannot read a number after `\(prefix)`") }
        return value
    }

    /// The path of one of the repository's scripts.
    static func scriptPath(_ name: String) -> String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../../scripts/\(name)")
            .standardizedFileURL.path
    }

    /// Throwaway certificates for the TLS rows, made by the repository's scripts/make-test-certs.sh.
    static func makeCertificates() throws -> String {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("pubsub-bench-tls-\(UUID().uuidString)").path
        let script = scriptPath("make-test-certs.sh")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = [script, directory, "localhost"]
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        guard childExitCode(of: process) == 0 else { throw ValidationError("\(script) failed (is openssl installed?)") }
        return directory
    }

    static func executablePath() throws -> String {
        let path = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: path).standardizedFileURL.path
    }
}

/// A table cell: millions from 10,000 up, else the number.
func format(_ value: Double) -> String {
    if value.isNaN { return "-" }
    if value >= 10_000 { return String(format: "%.2fM", value / 1_000_000).replacingOccurrences(of: "0.00M", with: "<0.01M") }
    return String(format: value >= 100 ? "%.0f" : "%.2f", value)
}

/// A table row: medians per engine and the Swift/C ratio.
struct Row {
    let name: String
    let unit: String
    let c: Double
    let swift: Double
    let higherIsBetter: Bool

    init(_ name: String, _ unit: String, _ samples: [Engine: [Double]], higherIsBetter: Bool) {
        self.name = name
        self.unit = unit
        self.c = median(samples[.c] ?? [])
        self.swift = median(samples[.swift] ?? [])
        self.higherIsBetter = higherIsBetter
    }

    var markdown: String {
        let ratio = c > 0 ? String(format: "%.2fx", swift / c) : "-"
        return "| \(name) | \(unit) | \(format(c)) | \(format(swift)) | \(ratio) |"
    }
}

func median(_ values: [Double]) -> Double {
    let sorted = values.filter { !$0.isNaN }.sorted()
    guard !sorted.isEmpty else { return .nan }
    return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}

/// A child process of this benchmark, its standard output collected.
final class Child: @unchecked Sendable {
    // @unchecked Sendable because: `output` is only touched under `lock`.
    private let process = Process()
    private let lock = NSLock()
    private var output = ""
    private var errors = ""

    init(_ executable: String, _ arguments: [String]) throws {
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        out.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let data = handle.availableData
            guard let self, !data.isEmpty else { return }
            self.lock.lock(); self.output += String(decoding: data, as: UTF8.self); self.lock.unlock()
        }
        err.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let data = handle.availableData
            guard let self, !data.isEmpty else { return }
            self.lock.lock(); self.errors += String(decoding: data, as: UTF8.self); self.lock.unlock()
        }
        try process.run()
    }

    private var collected: (String, String) {
        lock.lock()
        defer { lock.unlock() }
        return (output, errors)
    }

    func waitForLine(containing text: String, timeout: Duration = .seconds(60)) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if collected.0.contains(text) { return }
            guard process.isRunning else { break }
            try await Task.sleep(for: .milliseconds(2))
        }
        throw ValidationError("\(process.arguments?.first ?? "") did not print `\(text)`: \(collected.1)")
    }

    /// Waits for the exit; the output, or an error with standard error's text.
    func finish() async throws -> String {
        var status: Int32?
        while status == nil {
            status = childExitCode(of: process, wait: false)
            if status == nil { try await Task.sleep(for: .milliseconds(5)) }
        }
        try await Task.sleep(for: .milliseconds(20))  // let the pipes drain
        let (out, err) = collected
        guard status == 0 else {
            throw ValidationError("`pubsub-bench \(process.arguments?.joined(separator: " ") ?? "")` failed: \(err)")
        }
        return out
    }

    static func run(_ executable: String, _ arguments: [String]) async throws -> String {
        try await Child(executable, arguments).finish()
    }
}

/// A redis-server of the benchmark's own on a free loopback port, with no output-buffer limit for subscribers
/// (a slower subscriber must fall behind, not be disconnected, or it never reaches its count).
struct PrivateRedis {
    let port: Int
    /// Its TLS port, with the server certificate from `certificates`.
    let tlsPort: Int
    let process: Process
    let directory: URL
    let version: String

    static func start(certificates: String) throws -> PrivateRedis {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("pubsub-bench-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let executable = ["/usr/bin/redis-server", "/usr/local/bin/redis-server", "/opt/homebrew/bin/redis-server"]
            .first { FileManager.default.isExecutableFile(atPath: $0) }
        guard let executable else { throw ValidationError("redis-server is not installed") }
        for _ in 0..<10 {
            let port = Int.random(in: 20000..<60000)
            let tlsPort = Int.random(in: 20000..<60000)
            let process = Process()
            process.executableURL = URL(fileURLWithPath: executable)
            process.arguments = ["--port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                 "--dir", directory.path, "--client-output-buffer-limit", "pubsub 0 0 0",
                                 "--logfile", directory.appendingPathComponent("redis.log").path,
                                 "--tls-port", "\(tlsPort)", "--tls-cert-file", certificates + "/server.crt",
                                 "--tls-key-file", certificates + "/server.key", "--tls-ca-cert-file", certificates + "/ca.crt",
                                 "--tls-auth-clients", "no"]
            try process.run()
            for _ in 0..<200 {
                if !process.isRunning { break }
                if let version = ping(port: port) {
                    return PrivateRedis(port: port, tlsPort: tlsPort, process: process, directory: directory, version: version)
                }
                usleep(10_000)
            }
            kill(process.processIdentifier, SIGKILL)
            _ = childExitCode(of: process)
        }
        throw ValidationError("could not start redis-server")
    }

    func stop() {
        if childExitCode(of: process, wait: false) == nil {
            kill(process.processIdentifier, SIGKILL)
            _ = childExitCode(of: process)
        }
        try? FileManager.default.removeItem(at: directory)
    }

    /// The server's version once it answers on `port`.
    private static func ping(port: Int) -> String? {
        let cli = Process()
        cli.executableURL = URL(fileURLWithPath: "/bin/sh")
        cli.arguments = ["-c", "redis-cli -p \(port) INFO server 2>/dev/null | tr -d '\\r' | grep '^redis_version:' | cut -d: -f2"]
        let pipe = Pipe()
        cli.standardOutput = pipe
        guard (try? cli.run()) != nil else { return nil }
        _ = childExitCode(of: cli)
        let text = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        return text.isEmpty ? nil : text
    }
}

/// A private Redis Cluster of 3 primaries without replicas, started by the repository's scripts/redis-cluster.sh, with
/// no output-buffer limit for subscribers (as `PrivateRedis`).
struct PrivateCluster {
    let script: String
    let directory: String
    let primaries: [Int]

    static func start(script: String) throws -> PrivateCluster {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("pubsub-bench-cluster-\(UUID().uuidString)").path
        let (status, output) = shell("'\(script)' start '\(directory)' 3 0")
        let ports = output.split(separator: "\n").compactMap { $0.split(separator: ":").last.flatMap { Int($0) } }
        let cluster = PrivateCluster(script: script, directory: directory, primaries: ports)
        guard status == 0, ports.count == 3 else {
            cluster.stop()
            throw ValidationError("\(script) failed: \(output)")
        }
        for port in ports {
            _ = shell("redis-cli -p \(port) CONFIG SET client-output-buffer-limit 'pubsub 0 0 0'")
        }
        return cluster
    }

    /// The first of `prefix-0`, `prefix-1`, ... whose slot the primary on `port` serves (an SPUBLISH there is not
    /// redirected).
    func channel(ownedBy port: Int, prefix: String) throws -> String {
        for index in 0..<200 {
            let name = "\(prefix)-\(index)"
            let (status, output) = shell("redis-cli -p \(port) SPUBLISH '\(name)' probe")
            if status == 0, Int(output.trimmingCharacters(in: .whitespacesAndNewlines)) != nil { return name }
        }
        throw ValidationError("no channel found on the primary at port \(port)")
    }

    func stop() { _ = shell("'\(script)' stop '\(directory)'") }
}

/// Runs `command` with /bin/sh; its exit status and standard output (standard error merged).
func shell(_ command: String) -> (Int32, String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/sh")
    process.arguments = ["-c", command + " 2>&1"]
    let pipe = Pipe()
    process.standardOutput = pipe
    guard (try? process.run()) != nil else { return (-1, "") }
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    return (childExitCode(of: process) ?? -1, String(decoding: data, as: UTF8.self))
}

/// A child's exit code (a signal's number if one ended it), reaped with `waitpid` rather than Foundation's
/// `waitUntilExit()`/`isRunning`, which on Linux can miss an exit among many children and then wait forever.
/// With `wait: false`, `nil` while it runs. Ask until it answers, then no more: the child is reaped.
func childExitCode(of process: Process, wait: Bool = true) -> Int32? {
    while true {
        var status: Int32 = 0
        switch waitpid(process.processIdentifier, &status, wait ? 0 : WNOHANG) {
        case process.processIdentifier: return status & 0x7F == 0 ? (status >> 8) & 0xFF : status & 0x7F
        case -1 where errno == EINTR: continue
        case -1:  // ECHILD: Foundation reaped it and holds the status
            if !wait && process.isRunning { return nil }
            process.waitUntilExit()
            return process.terminationStatus
        default: return nil
        }
    }
}
