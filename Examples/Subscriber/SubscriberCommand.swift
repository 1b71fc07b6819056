import ArgumentParser
import DemoSupport
import Foundation
import RedisPubSub
import ServiceLifecycle

@main
struct SubscriberCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "subscriber",
        abstract: "Prints the messages published to Redis channels (the notifications demo's receiving side).",
        discussion: """
            Prints "Subscribed to <names>" once the server acknowledged, then one line per message: \
            "Received message on <channel>: <payload>", with " (pattern <glob>)" after the channel for pattern \
            matches. A lost connection is re-established and resubscribed; each disconnect and recovery is logged \
            on standard error. With --cluster, the URL names a seed node of a Redis Cluster: sharded channels are \
            subscribed on their slots' primaries and followed through slot migrations and failovers, each logged on \
            standard error; --migration-watch-interval makes watched migrations lossless. SIGINT and SIGTERM unsubscribe and exit 0.
            """
    )

    @Option(help: "Redis URL: redis://, rediss:// (TLS) or unix://. Default: the REDIS_URL environment variable, else redis://127.0.0.1:6379.")
    var url: String?

    @OptionGroup(title: "TLS")
    var tls: TLSOptions

    @Option(name: .customLong("connect-timeout"), help: "Seconds to keep trying to reach the server at start-up.")
    var connectTimeout: Double = 10

    @Option(name: .customLong("health-check-interval"), help: "Seconds of silence before a PING checks the connection (0: never).")
    var healthCheckInterval: Double = 5

    @Option(name: .customLong("channel"), help: "A channel to subscribe to; repeat for more. Default: notifications (when no --pattern is given).")
    var channels: [String] = []

    @Option(name: .customLong("pattern"), help: "A glob pattern to subscribe to (PSUBSCRIBE); repeat for more.")
    var patterns: [String] = []

    @Option(name: .customLong("shard-channel"), help: "A sharded channel to subscribe to (SSUBSCRIBE, Redis 7); repeat for more.")
    var shardChannels: [String] = []

    @Flag(help: "The URL names a seed node of a Redis Cluster.")
    var cluster = false

    @Option(name: .customLong("migration-watch-interval"), help: "With --cluster: seconds between asking the primaries for slot migrations, to subscribe on the importing node before a slot flips so that a migration loses nothing (0: never).")
    var migrationWatchInterval: Double = 0

    @Flag(help: "Decode each payload as a notification {\"id\", \"text\", \"sentAt\"} and print its id and text.")
    var json = false

    @Option(help: "Exit 0 after printing this many messages (skipped payloads do not count).")
    var count: Int?

    @Option(name: .customLong("stream"), help: "Read this Redis Stream instead of subscribing; repeat for more. Prints \"Received message on <stream>: <payload>\". With --group, consumes it through a consumer group and acknowledges each entry after --work seconds; without, reads every entry (XREAD) from --from.")
    var streams: [String] = []

    @Option(help: "With --stream: the consumer group (created if missing).")
    var group: String?

    @Option(help: "With --stream and no --group: where to start: $ (entries appended from now on), 0 (every entry) or an entry ID to read after.")
    var from: String = "$"

    @Option(help: "With --stream: this consumer's name in the group; keep it across restarts. Default: the host name.")
    var consumer: String?

    @Option(help: "With --stream: seconds of simulated processing before each acknowledgement.")
    var work: Double = 0

    @Option(name: .customLong("claim-idle"), help: "With --stream: seconds after which another consumer's unacknowledged entries are taken over (0: never).")
    var claimIdle: Double = 30

    @Option(name: .customLong("max-deliveries"), help: "With --stream: deliveries after which an entry moves to the dead-letter stream (0: never).")
    var maxDeliveries: Int = 10

    @Option(name: .customLong("dead-letter"), help: "With --stream: the dead-letter stream. Default: <stream>:dead-letter.")
    var deadLetter: String?

    func validate() throws {
        if let count, count < 1 { throw ValidationError("--count must be at least 1") }
        if connectTimeout <= 0 { throw ValidationError("--connect-timeout must be positive") }
        if healthCheckInterval < 0 { throw ValidationError("--health-check-interval must not be negative") }
        if migrationWatchInterval < 0 { throw ValidationError("--migration-watch-interval must not be negative") }
        if migrationWatchInterval > 0 && !cluster { throw ValidationError("--migration-watch-interval needs --cluster") }
        if streams.isEmpty {
            if group != nil || consumer != nil || deadLetter != nil { throw ValidationError("--group, --consumer and --dead-letter need --stream") }
            if from != "$" { throw ValidationError("--from needs --stream") }
        } else {
            if group == nil && (consumer != nil || deadLetter != nil) { throw ValidationError("--consumer and --dead-letter need --group") }
            if group != nil && from != "$" { throw ValidationError("--from is for reading without --group (a group starts where it is)") }
            if start == nil { throw ValidationError("--from must be $, 0 or an entry ID such as 1700000000000-0") }
            if cluster || !channels.isEmpty || !patterns.isEmpty || !shardChannels.isEmpty {
                throw ValidationError("--stream cannot be combined with --cluster, --channel, --pattern or --shard-channel")
            }
            if work < 0 || claimIdle < 0 || maxDeliveries < 0 { throw ValidationError("--work, --claim-idle and --max-deliveries must not be negative") }
        }
    }

    func run() async throws {
        let noneGiven = channels.isEmpty && patterns.isEmpty && shardChannels.isEmpty
        let channels = noneGiven ? ["notifications"] : self.channels
        let configuration = DemoSupport.configuration(url: url, healthCheckInterval: healthCheckInterval, tls: tls)
        let names = channels + patterns + shardChannels
        if !streams.isEmpty, group == nil {
            try await readStreams(configuration)
        } else if !streams.isEmpty {
            try await consumeStreams(configuration)
        } else if cluster {
            let subscriber = await connectWithRetry(configuration, timeout: connectTimeout) {
                var cluster = RedisClusterConfiguration(seeds: [$0])
                if migrationWatchInterval > 0 { cluster.migrationWatchInterval = .seconds(migrationWatchInterval) }
                return try await ClusterSubscriber.connect(to: cluster)
            }
            let eventLog = logClusterEvents(subscriber.events(), name: "subscriber")
            let subscription = await subscribe(names) { () async throws(RedisError) -> Subscription in
                try await subscriber.subscribe(channels: channels, patterns: patterns, shardChannels: shardChannels)
            }
            let gapLog = logSubscriptionEvents(subscription.events(), name: "subscriber")
            let printer = Printer(subscription: subscription, json: json, count: count)
            guard await runServices(connection: subscriber, worker: printer, name: "subscriber") else { throw ExitCode(1) }
            eventLog.cancel()
            gapLog.cancel()
        } else {
            let subscriber = await connectWithRetry(configuration, timeout: connectTimeout) {
                try await Subscriber.connect(to: $0)
            }
            let eventLog = logConnectionEvents(subscriber.events(), name: "subscriber")
            let subscription = await subscribe(names) { () async throws(RedisError) -> Subscription in
                try await subscriber.subscribe(channels: channels, patterns: patterns, shardChannels: shardChannels)
            }
            let printer = Printer(subscription: subscription, json: json, count: count)
            guard await runServices(connection: subscriber, worker: printer, name: "subscriber") else { throw ExitCode(1) }
            eventLog.cancel()
        }
    }

    /// --from as a start; `nil` when it is none.
    private var start: StreamReader.Start? {
        switch from {
        case "$": .newEntries
        case "0": .beginning
        default: StreamEntryID(from).map { .after($0) }
        }
    }

    /// The --stream mode without --group: a reader of every entry, from --from.
    private func readStreams(_ configuration: RedisConfiguration) async throws {
        let streams = self.streams.map { RedisName($0) }
        let start = self.start ?? .newEntries
        let reader = await connectWithRetry(configuration, timeout: connectTimeout) {
            try await StreamReader.connect(to: $0, streams: streams, from: start)
        }
        Console.out("Reading \(self.streams.joined(separator: ", ")) from \(from)")
        let eventLog = logStreamEvents(reader.events(), name: "subscriber")
        let worker = StreamEntryPrinter(reader: reader, json: json, count: count, work: work)
        guard await runServices(connection: reader, worker: worker, name: "subscriber") else { throw ExitCode(1) }
        eventLog.cancel()
    }

    /// The --stream mode with --group: a consumer group member that prints, works, then acknowledges each entry.
    private func consumeStreams(_ configuration: RedisConfiguration) async throws {
        var options = StreamConsumer.Options()
        options.claimIdle = claimIdle > 0 ? .milliseconds(Int(claimIdle * 1000)) : nil
        if let claimIdle = options.claimIdle { options.claimInterval = min(.seconds(5), max(.milliseconds(100), claimIdle / 4)) }
        options.maxDeliveries = maxDeliveries > 0 ? maxDeliveries : nil
        options.deadLetterStream = deadLetter.map { RedisName($0) }
        let streams = self.streams.map { RedisName($0) }
        let group = RedisName(self.group ?? "")
        let name = RedisName(consumer ?? ProcessInfo.processInfo.hostName)
        let consumer = await connectWithRetry(configuration, timeout: connectTimeout) {
            try await StreamConsumer.connect(to: $0, streams: streams, group: group, consumer: name, options: options)
        }
        Console.out("Consuming \(self.streams.joined(separator: ", ")) in group \(group) as \(name)")
        let eventLog = logStreamEvents(consumer.events(), name: "subscriber")
        let worker = StreamPrinter(consumer: consumer, json: json, count: count, work: work)
        guard await runServices(connection: consumer, worker: worker, name: "subscriber") else { throw ExitCode(1) }
        eventLog.cancel()
    }

    /// Subscribes and prints "Subscribed to ..."; exits 1 when the server refuses.
    private func subscribe(_ names: [String], _ body: () async throws(RedisError) -> Subscription) async -> Subscription {
        do {
            let subscription = try await body()
            Console.out("Subscribed to " + names.joined(separator: ", "))
            return subscription
        } catch {
            Console.error("error: cannot subscribe: \(error)")
            Foundation.exit(1)
        }
    }
}

/// Prints the messages; returns after `count` of them, or when the group shuts down (SIGINT, SIGTERM).
struct Printer: Service {
    let subscription: Subscription
    let json: Bool
    let count: Int?

    func run() async throws {
        try await cancelWhenGracefulShutdown {
            var printed = 0
            for try await message in subscription {
                let source = message.channel + (message.pattern.map { " (pattern \($0))" } ?? "")
                if json {
                    do {
                        let notification = try message.decode(Notification.self, using: Notification.decoder)
                        Console.out("Received notification #\(notification.id) on \(source): \(notification.text)")
                    } catch let error as MessageDecodingError {
                        Console.error("Skipped a message on \(source): not a notification (\(error.underlying))")
                        continue  // not counted: --count counts the messages printed
                    }
                } else {
                    Console.out("Received message on \(source): \(message.string)")
                }
                printed += 1
                if let count, printed >= count { return }
            }
        }
    }
}

/// Prints each entry a reader reads (with --json, skips a payload that is not a notification), after `work` seconds.
struct StreamEntryPrinter: Service {
    let reader: StreamReader
    let json: Bool
    let count: Int?
    let work: Double

    func run() async throws {
        try await cancelWhenGracefulShutdown {
            var printed = 0
            for try await entry in reader {
                if work > 0 { try await Task.sleep(for: .milliseconds(Int(work * 1000))) }
                if json {
                    do {
                        let notification = try entry.decode(Notification.self, using: Notification.decoder)
                        Console.out("Received notification #\(notification.id) on \(entry.stream): \(notification.text)")
                    } catch let error as MessageDecodingError {
                        Console.error("Skipped \(entry.stream) \(entry.id): not a notification (\(error.underlying))")
                        continue
                    }
                } else {
                    Console.out("Received message on \(entry.stream): \(entry.string)")
                }
                printed += 1
                if let count, printed >= count { return }
            }
        }
    }
}

/// Prints each stream entry, works on it for `work` seconds, then acknowledges it; a payload that is not a
/// notification (with --json) is failed instead, so it is delivered again and ends in the dead-letter stream.
struct StreamPrinter: Service {
    let consumer: StreamConsumer
    let json: Bool
    let count: Int?
    let work: Double

    func run() async throws {
        try await cancelWhenGracefulShutdown {
            var printed = 0
            for try await message in consumer {
                if json {
                    do {
                        let notification = try message.decode(Notification.self, using: Notification.decoder)
                        Console.out("Received notification #\(notification.id) on \(message.stream): \(notification.text)")
                    } catch let error as MessageDecodingError {
                        Console.error("Not acknowledged: \(message.stream) \(message.id) is not a notification (\(error.underlying))")
                        message.fail()
                        continue
                    }
                } else {
                    Console.out("Received message on \(message.stream): \(message.string)")
                }
                if work > 0 { try await Task.sleep(for: .milliseconds(Int(work * 1000))) }
                message.ack()
                printed += 1
                if let count, printed >= count { return }
            }
        }
    }
}
