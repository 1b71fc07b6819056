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

    func validate() throws {
        if let count, count < 1 { throw ValidationError("--count must be at least 1") }
        if connectTimeout <= 0 { throw ValidationError("--connect-timeout must be positive") }
        if healthCheckInterval < 0 { throw ValidationError("--health-check-interval must not be negative") }
        if migrationWatchInterval < 0 { throw ValidationError("--migration-watch-interval must not be negative") }
        if migrationWatchInterval > 0 && !cluster { throw ValidationError("--migration-watch-interval needs --cluster") }
    }

    func run() async throws {
        let noneGiven = channels.isEmpty && patterns.isEmpty && shardChannels.isEmpty
        let channels = noneGiven ? ["notifications"] : self.channels
        let configuration = DemoSupport.configuration(url: url, healthCheckInterval: healthCheckInterval, tls: tls)
        let names = channels + patterns + shardChannels
        if cluster {
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
