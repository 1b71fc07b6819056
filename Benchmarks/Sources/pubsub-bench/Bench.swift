import ArgumentParser
import Foundation
import Histogram
import HiredisBaseline
import RedisPubSub

@main
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pubsub-bench",
        abstract: "Pub/Sub throughput, CPU and latency of RedisPubSub, side by side with raw hiredis (C).",
        subcommands: [Compare.self, Subscribe.self, Publish.self, PublishPaced.self, Burst.self, Consume.self]
    )
}

/// Which client does the work: this package through its public API, or the C baseline built from the same libhiredis.
enum Engine: String, ExpressibleByArgument, CaseIterable, Sendable {
    case swift, c
}

/// Where the Swift tasks run.
enum ExecutorChoice: String, ExpressibleByArgument, CaseIterable, Sendable {
    /// The global concurrent executor (what a task gets without asking).
    case global
    /// The connection's event-loop thread (`taskExecutor`).
    case loop
}

struct Common: ParsableArguments {
    @Option(help: "Redis URL.")
    var url = "redis://127.0.0.1:6379"

    @Option(help: "The channel.")
    var channel = "bench"

    @Option(help: "Seconds after which the run is abandoned (exit status 1).")
    var timeout: UInt32 = 300

    @Option(name: .customLong("tls-ca-file"), help: "With a rediss:// URL: the CA file that signs the server's certificate.")
    var tlsCAFile: String?

    /// The URL's configuration, trusting `--tls-ca-file`.
    var configuration: RedisConfiguration {
        get throws {
            var configuration = try RedisConfiguration(url: url)
            if let tlsCAFile { configuration.tls?.trust = .certificateAuthorityFile(tlsCAFile) }
            return configuration
        }
    }

    var endpoint: (host: String, port: Int32) {
        get throws {
            guard case .tcp(let host, let port) = try RedisConfiguration(url: url).endpoint else {
                throw ValidationError("the benchmark needs a TCP URL")
            }
            return (host, Int32(port))
        }
    }
}

// MARK: subscribe

struct Subscribe: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Subscribes, prints `ready` once acknowledged, and `received N messages in S s` after N messages.")

    @OptionGroup var common: Common

    @Option(help: "Messages to receive.")
    var count: Int

    @Option(help: "swift: `for try await` over this package's Subscription; c: raw hiredis.")
    var engine = Engine.swift

    @Option(help: "Subscriptions (Swift) or counters (C) each message is delivered to.")
    var fanout = 1

    @Flag(help: "Payloads start with their send time (CLOCK_MONOTONIC ns): record publish-to-receive latency.")
    var latency = false

    @Option(help: "Swift: where the consuming tasks run: global (the default executor) or loop (the subscriber's taskExecutor).")
    var executor = ExecutorChoice.global

    @Option(name: .customLong("shard-channel"), help: "Swift: SSUBSCRIBE to this sharded channel instead of --channel (repeatable).")
    var shardChannels: [String] = []

    @Flag(help: "Swift: --url names a seed node of a Redis Cluster; subscribe with a ClusterSubscriber.")
    var cluster = false

    func run() async throws {
        alarm(common.timeout)
        let (host, port) = try common.endpoint
        switch engine {
        case .c where try common.configuration.tls != nil:
            guard let caFile = common.tlsCAFile, fanout == 1, !latency else {
                throw ValidationError("the C baseline over TLS takes --tls-ca-file, and no --fanout or --latency")
            }
            let start = cpuSeconds()
            let result = baseline_subscribe_tls(host, port, common.channel, count, caFile, { printFlushed("ready") })
            guard result.error == 0 else { throw failure(result) }
            report(received: result.messages, seconds: result.seconds, cpu: cpuSeconds() - start, latencies: [])
        case .c:
            let start = cpuSeconds()
            var latencies = [UInt64](repeating: 0, count: latency ? count : 0)
            let result = latencies.withUnsafeMutableBufferPointer { buffer in
                baseline_subscribe(host, port, common.channel, count, Int32(fanout), { printFlushed("ready") },
                                   latency ? buffer.baseAddress : nil)
            }
            guard result.error == 0 else { throw failure(result) }
            report(received: result.messages, seconds: result.seconds, cpu: cpuSeconds() - start, latencies: latencies)
        case .swift:
            var configuration = try common.configuration
            configuration.healthCheckInterval = nil
            let channels: [any RedisNameConvertible] = shardChannels.isEmpty ? [common.channel] : []
            let shardChannels: [any RedisNameConvertible] = self.shardChannels
            // Unbounded: the benchmark counts every message; a bounded buffer would drop under bursts by design.
            let subscribe: () async throws -> Subscription
            let close: () async -> Void
            var preference: (any TaskExecutor)?
            if cluster {
                guard executor == .global else { throw ValidationError("--cluster runs its consumers on the default executor") }
                let subscriber = try await ClusterSubscriber.connect(to: RedisClusterConfiguration(seeds: [configuration]))
                subscribe = { try await subscriber.subscribe(channels: channels, shardChannels: shardChannels, bufferingPolicy: .unbounded) }
                close = { await subscriber.close() }
            } else {
                let subscriber = try await Subscriber.connect(to: configuration)
                subscribe = { try await subscriber.subscribe(channels: channels, shardChannels: shardChannels, bufferingPolicy: .unbounded) }
                close = { await subscriber.close() }
                preference = executor == .loop ? subscriber.taskExecutor : nil
            }
            var subscriptions: [Subscription] = []
            for _ in 0..<fanout { subscriptions.append(try await subscribe()) }
            printFlushed("ready")
            let start = cpuSeconds()
            let count = self.count, latency = self.latency
            let results = try await withThrowingTaskGroup(of: (UInt64, UInt64, [UInt64]).self) { group in
                for subscription in subscriptions {
                    group.addTask(executorPreference: preference) {
                        var received = 0
                        var first: UInt64 = 0
                        var latencies: [UInt64] = []
                        if latency { latencies.reserveCapacity(count) }
                        for try await message in subscription {
                            let now = baseline_now_ns()
                            if received == 0 { first = now }
                            if latency { latencies.append(now &- sendTime(message.payload)) }
                            received += 1
                            if received == count { return (first, now, latencies) }
                        }
                        throw ValidationError("the subscription ended after \(received) messages")
                    }
                }
                var all: [(UInt64, UInt64, [UInt64])] = []
                for try await result in group { all.append(result) }
                return all
            }
            let first = results.map(\.0).min() ?? 0
            let last = results.map(\.1).max() ?? 0
            report(received: count, seconds: Double(last - first) / 1e9, cpu: cpuSeconds() - start,
                   latencies: results.first?.2 ?? [])
            await close()
        }
    }

    private func report(received: Int, seconds: Double, cpu: Double, latencies: [UInt64]) {
        printFlushed("received \(received) messages in \(String(format: "%.6f", seconds)) s")
        printFlushed("cpu \(String(format: "%.6f", cpu)) s")
        guard !latencies.isEmpty else { return }
        var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000_000)
        for value in latencies { _ = histogram.record(max(1, value)) }
        func us(_ percentile: Double) -> String { String(format: "%.1f", Double(histogram.valueAtPercentile(percentile)) / 1000) }
        printFlushed("latency p50 \(us(50)) us p99 \(us(99)) us p99.9 \(us(99.9)) us")
    }
}

/// The decimal CLOCK_MONOTONIC nanoseconds a paced publisher put at the front of the payload.
func sendTime(_ payload: [UInt8]) -> UInt64 {
    var value: UInt64 = 0
    for byte in payload {
        guard byte >= 48 && byte <= 57 else { break }
        value = value &* 10 &+ UInt64(byte - 48)
    }
    return value
}

// MARK: publish

struct Publish: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Publishes N messages from K concurrent tasks (Swift) or with K commands in flight (C).")

    @OptionGroup var common: Common

    @Option(help: "Messages to publish in total.")
    var count: Int

    @Option(help: "Payload size in bytes.")
    var size = 64

    @Option(help: "Swift: publishing tasks sharing one Publisher. C: commands in flight.")
    var concurrency = 1

    @Option(help: "swift: this package's Publisher; c: raw hiredis.")
    var engine = Engine.swift

    @Option(help: "Swift: where the publishing tasks run: global (the default executor) or loop (the publisher's taskExecutor).")
    var executor = ExecutorChoice.global

    @Option(help: "Swift: messages per call; above 1, each task publishes with publish(contentsOf:to:).")
    var batch = 1

    @Option(name: .customLong("shard-channel"), help: "SPUBLISH to sharded channels instead of --channel (repeatable; Swift tasks take them in turn, C takes the first).")
    var shardChannels: [String] = []

    @Flag(help: "Swift: --url names a seed node of a Redis Cluster; publish with a ClusterPublisher.")
    var cluster = false

    @Flag(help: "Append to --channel as a Redis Stream (XADD ... payload) instead of publishing: Publisher.append (Swift), XADD (C).")
    var stream = false

    func run() async throws {
        alarm(common.timeout)
        let (host, port) = try common.endpoint
        let start = cpuSeconds()
        if stream && (cluster || !shardChannels.isEmpty) { throw ValidationError("--stream appends to --channel on one server") }
        switch engine {
        case .c:
            let result = stream ? baseline_xadd(host, port, common.channel, count, size, Int32(concurrency))
                : shardChannels.first.map { baseline_spublish(host, port, $0, count, size, Int32(concurrency)) }
                ?? baseline_publish(host, port, common.channel, count, size, Int32(concurrency))
            guard result.error == 0 else { throw failure(result) }
            printFlushed("published \(result.messages) messages in \(String(format: "%.6f", result.seconds)) s")
        case .swift:
            var configuration = try RedisConfiguration(url: common.url)
            configuration.commandTimeout = .seconds(60)
            let payload = [UInt8](repeating: 120, count: size)
            let sharded = !shardChannels.isEmpty
            let channels = sharded ? shardChannels : [common.channel]
            let count = self.count, concurrency = self.concurrency, batch = self.batch, stream = self.stream
            // One message to a channel, through whichever publisher the flags chose.
            let publishOne: @Sendable ([UInt8], String) async throws -> Void
            let close: () async -> Void
            var publisher: Publisher?
            var preference: (any TaskExecutor)?
            if cluster {
                guard batch <= 1, executor == .global else {
                    throw ValidationError("--cluster publishes one message per call from tasks on the default executor")
                }
                let clusterPublisher = try await ClusterPublisher.connect(to: RedisClusterConfiguration(seeds: [configuration]))
                publishOne = { payload, channel in
                    if sharded { _ = try await clusterPublisher.publish(payload, toShard: channel) }
                    else { _ = try await clusterPublisher.publish(payload, to: channel) }
                }
                close = { await clusterPublisher.close() }
            } else {
                let single = try await Publisher.connect(to: configuration)
                publishOne = { payload, channel in
                    if sharded { _ = try await single.publish(payload, toShard: channel) }
                    else { _ = try await single.publish(payload, to: channel) }
                }
                close = { await single.close() }
                publisher = single
                preference = executor == .loop ? single.taskExecutor : nil
            }
            let clock = ContinuousClock.now
            try await withThrowingTaskGroup(of: Void.self) { group in
                for task in 0..<concurrency {
                    let share = count / concurrency + (task < count % concurrency ? 1 : 0)
                    let channel = channels[task % channels.count]
                    group.addTask(executorPreference: preference) { [publisher] in
                        if stream, let publisher {  // Publisher.append, one entry per call or a batch per call
                            var left = share
                            while left > 0 {
                                let size = min(max(batch, 1), left)
                                if size == 1 { try await publisher.append(payload, to: channel) }
                                else { try await publisher.append(contentsOf: repeatElement(payload, count: size), to: channel) }
                                left -= size
                            }
                            return
                        }
                        if batch <= 1, let publisher, !sharded {  // the plain path, called directly as users do
                            for _ in 0..<share { try await publisher.publish(payload, to: channel) }
                            return
                        }
                        if batch <= 1 {  // the rows that compare a cluster with one node: both through the closure
                            for _ in 0..<share { try await publishOne(payload, channel) }
                            return
                        }
                        guard let publisher, !sharded else { throw ValidationError("--batch publishes to --channel") }
                        var left = share
                        while left > 0 {
                            let size = min(batch, left)
                            try await publisher.publish(contentsOf: repeatElement(payload, count: size), to: channel)
                            left -= size
                        }
                    }
                }
                try await group.waitForAll()
            }
            let elapsed = ContinuousClock.now - clock
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            printFlushed("published \(count) messages in \(String(format: "%.6f", seconds)) s")
            await close()
        }
        printFlushed("cpu \(String(format: "%.6f", cpuSeconds() - start)) s")
    }
}

// MARK: consume

struct Consume: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Reads N entries of the stream --channel through a consumer group, acknowledging each: StreamConsumer "
            + "(Swift) or XREADGROUP COUNT --batch with pipelined XACK (C). Prints `received N messages in S s`.")

    @OptionGroup var common: Common

    @Option(help: "Entries to read (the stream must hold at least this many).")
    var count: Int

    @Option(help: "The consumer group, created from the stream's first entry.")
    var group: String

    @Option(help: "swift: this package's StreamConsumer; c: raw hiredis.")
    var engine = Engine.swift

    @Option(help: "C: COUNT per read. Swift: the prefetch.")
    var batch = 100

    @Option(help: "Swift: where the consuming task runs: global (the default executor) or loop (the consumer's taskExecutor).")
    var executor = ExecutorChoice.global

    func run() async throws {
        alarm(common.timeout)
        let (host, port) = try common.endpoint
        let start = cpuSeconds()
        switch engine {
        case .c:
            let result = baseline_xreadgroup(host, port, common.channel, group, count, Int32(batch))
            guard result.error == 0 else { throw failure(result) }
            printFlushed("received \(result.messages) messages in \(String(format: "%.6f", result.seconds)) s")
        case .swift:
            var configuration = try common.configuration
            configuration.healthCheckInterval = nil
            // No reclaiming or dead letters: the C loop has none either.
            let options = StreamConsumer.Options(prefetch: batch, start: .beginning, claimIdle: nil, maxDeliveries: nil)
            let consumer = try await StreamConsumer.connect(
                to: configuration, streams: [RedisName(common.channel)], group: RedisName(group), consumer: "bench",
                options: options)
            let count = self.count
            let reading = Task(executorPreference: executor == .loop ? consumer.taskExecutor : nil) {
                var received = 0
                var first = ContinuousClock.now, last = first
                for try await message in consumer {
                    message.ack()
                    received += 1
                    if received == 1 { first = .now }
                    if received == count {
                        last = .now
                        break
                    }
                }
                return (received, last - first)
            }
            let (received, elapsed) = try await reading.value
            await consumer.close()  // sends the last acknowledgements
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            printFlushed("received \(received) messages in \(String(format: "%.6f", seconds)) s")
        }
        printFlushed("cpu \(String(format: "%.6f", cpuSeconds() - start)) s")
    }
}

struct PublishPaced: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "publish-paced",
        abstract: "Raw hiredis publisher at a fixed rate, each payload starting with its send time (for latency).")

    @OptionGroup var common: Common

    @Option(help: "Messages to publish.")
    var count: Int

    @Option(help: "Messages per second.")
    var rate: Int

    @Option(help: "Payload size in bytes (at least 24).")
    var size = 64

    func run() async throws {
        alarm(common.timeout)
        let (host, port) = try common.endpoint
        let result = baseline_publish_paced(host, port, common.channel, count, size, rate)
        guard result.error == 0 else { throw failure(result) }
        printFlushed("published \(result.messages) messages in \(String(format: "%.6f", result.seconds)) s")
    }
}

// MARK: burst

struct Burst: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Memory under a burst: a subscription whose consumer is stalled while N messages arrive; prints the "
            + "peak resident memory, then drains and prints what was delivered and dropped.")

    @OptionGroup var common: Common

    @Option(help: "Messages in the burst.")
    var count = 1_000_000

    @Option(help: "Payload size in bytes.")
    var size = 64

    @Option(help: "default: the default bounded policy (newest 10,000); unbounded: keep everything.")
    var policy = PolicyChoice.default

    enum PolicyChoice: String, ExpressibleByArgument, CaseIterable {
        case `default`, unbounded
    }

    func run() async throws {
        alarm(common.timeout)
        let (host, port) = try common.endpoint
        var configuration = try RedisConfiguration(url: common.url)
        configuration.healthCheckInterval = nil
        let subscriber = try await Subscriber.connect(to: configuration)
        let publisher = try await Publisher.connect(to: configuration)
        let subscription = try await subscriber.subscribe(
            to: common.channel, bufferingPolicy: policy == .default ? .default : .unbounded)
        let before = peakResidentBytes()
        // The burst, from raw hiredis with 1,000 in flight, while nobody consumes; then a marker.
        let result = baseline_publish(host, port, common.channel, count, size, 1000)
        guard result.error == 0 else { throw failure(result) }
        try await publisher.publish("end", to: common.channel)
        var delivered = 0
        for try await message in subscription {
            delivered += 1
            if message.payload == Array("end".utf8) { break }
        }
        let peak = peakResidentBytes()
        printFlushed("burst of \(count) messages of \(size) B, policy \(policy.rawValue): peak RSS \(mb(peak)) MB "
            + "(\(mb(before)) MB before the burst), delivered \(delivered), dropped \(subscription.droppedMessageCount)")
        await publisher.close()
        await subscriber.close()
    }

    private func mb(_ bytes: Int) -> String { String(format: "%.1f", Double(bytes) / 1_048_576) }
}

/// The process's peak resident memory so far, in bytes.
func peakResidentBytes() -> Int {
    var usage = rusage()
    #if canImport(Darwin)
    getrusage(RUSAGE_SELF, &usage)
    return Int(usage.ru_maxrss)  // bytes on Darwin
    #else
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Int(usage.ru_maxrss) * 1024  // kilobytes on Linux
    #endif
}

// MARK: helpers

func printFlushed(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

/// User plus system CPU time of this process.
func cpuSeconds() -> Double {
    var usage = rusage()
    #if canImport(Darwin)
    getrusage(RUSAGE_SELF, &usage)
    #else
    getrusage(RUSAGE_SELF.rawValue, &usage)
    #endif
    return Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6
        + Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
}

func failure(_ result: baseline_result) -> ValidationError {
    var message = result.message
    let text = withUnsafeBytes(of: &message) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    return ValidationError("hiredis baseline: \(text)")
}
