import Foundation
import Logging
@testable import RedisPubSub
import Testing

/// A configuration for the TLS port of a server from ``RedisServer/startTLS``, trusting the test CA.
func tlsConfiguration(
    port: Int, host: String = "127.0.0.1", _ adjust: (inout RedisConfiguration) -> Void = { _ in }
) throws -> RedisConfiguration {
    var configuration = try RedisConfiguration(url: "rediss://\(host):\(port)")
    configuration.tls?.trust = .certificateAuthorityFile(TestCertificates.shared.ca)
    configuration.connectTimeout = patientConnectTimeout
    adjust(&configuration)
    return configuration
}

/// How long a failure that is not retried may take: far below ``patientConnectTimeout`` (a retried one takes all of
/// it), with room for a sanitizer run on a loaded machine.
let failsAtOnce = Duration.seconds(15)

/// The connect timeout of configurations whose failure must not be retried.
let patientConnectTimeout = Duration.seconds(30)

/// The error a connect fails with, and how long it took.
func connectFailure(_ configuration: RedisConfiguration) async -> (error: RedisError?, time: Duration) {
    var failure: RedisError?
    let time = await elapsed {
        do {
            let connection = try await RedisConnection.connect(to: configuration)
            await connection.close()
        } catch {
            failure = error as? RedisError
        }
    }
    return (failure, time)
}

/// Serialized: each test starts its own servers and moves megabytes through TLS, which under a sanitizer on two cores
/// would otherwise starve the timing-sensitive tests of other suites.
@Suite("TLS: rediss:// end to end against redis-server's TLS port", .serialized)
struct TLSTests {
    @Test func aRedissURLConnectsVerifiedAndCarriesLargeValuesBothWays() async throws {
        let (server, tlsPort) = try RedisServer.startTLS()
        defer { server.stop() }
        for host in ["127.0.0.1", "localhost"] {  // an IP address checked against the IP entry, a name against DNS
            let configuration = try tlsConfiguration(port: tlsPort, host: host)
            #expect(configuration.description.hasPrefix("rediss://\(host):\(tlsPort) TLS (CA file "))
            let connection = try await RedisConnection.connect(to: configuration)
            #expect(try await connection.ping() == "PONG")
            let large = [UInt8]((0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) })
            let key = uniqueName("tls")
            try await connection.send("SET", key, large)
            #expect(try await connection.send("GET", key).bytes == large)
            // The server sees a TLS client (CLIENT INFO has no TLS field in 7.0; the plaintext port is another one).
            let info = try #require(try await connection.send("CLIENT", "INFO").string)
            #expect(info.contains("laddr=127.0.0.1:\(tlsPort)"))
            await connection.close()
        }
    }

    @Test func mutualTLSPresentsTheClientCertificateAndItsAbsenceOrRefusalIsNamed() async throws {
        let (server, tlsPort) = try RedisServer.startTLS(clientCertificates: "yes")
        defer { server.stop() }
        let certificates = TestCertificates.shared
        let accepted = try tlsConfiguration(port: tlsPort) {
            $0.tls?.certificateFile = certificates.clientCertificate
            $0.tls?.privateKeyFile = certificates.clientKey
        }
        let connection = try await RedisConnection.connect(to: accepted)
        #expect(try await connection.ping() == "PONG")
        await connection.close()

        // Without a certificate, and with one the server's CA did not sign: a configuration error, not retried.
        let none = await connectFailure(try tlsConfiguration(port: tlsPort))
        #expect(none.error?.code == .invalidConfiguration, "\(String(describing: none.error))")
        #expect(none.error?.message.contains("requires a client certificate") == true, "\(String(describing: none.error))")
        let untrusted = await connectFailure(
            try tlsConfiguration(port: tlsPort) {
                $0.tls?.certificateFile = certificates.untrustedClientCertificate
                $0.tls?.privateKeyFile = certificates.clientKey
            })
        #expect(untrusted.error?.code == .invalidConfiguration, "\(String(describing: untrusted.error))")
        #expect(
            untrusted.error?.message.contains("refused this client's TLS certificate") == true,
            "\(String(describing: untrusted.error))")
        #expect(none.time < failsAtOnce && untrusted.time < failsAtOnce)  // at once, not after the connect timeout
    }

    @Test func overTLS12MutualTLSAndItsRefusalAndAMinimumVersionTheServerLacks() async throws {
        let (server, tlsPort) = try RedisServer.startTLS(clientCertificates: "yes", ["--tls-protocols", "TLSv1.2"])
        defer { server.stop() }
        let certificates = TestCertificates.shared
        let connection = try await RedisConnection.connect(
            to: try tlsConfiguration(port: tlsPort) {
                $0.tls?.certificateFile = certificates.clientCertificate
                $0.tls?.privateKeyFile = certificates.clientKey
            })
        #expect(try await connection.ping() == "PONG")
        await connection.close()
        // TLS 1.2 refuses a missing client certificate with a generic handshake_failure alert.
        let none = await connectFailure(try tlsConfiguration(port: tlsPort))
        #expect(none.error?.code == .invalidConfiguration, "\(String(describing: none.error))")
        #expect(none.error?.message.contains("may require a client certificate") == true, "\(String(describing: none.error))")
        let newer = await connectFailure(
            try tlsConfiguration(port: tlsPort) {
                $0.tls?.minimumVersion = .tls1_3
                $0.tls?.certificateFile = certificates.clientCertificate
                $0.tls?.privateKeyFile = certificates.clientKey
            })
        #expect(newer.error?.code == .invalidConfiguration, "\(String(describing: newer.error))")
        #expect(newer.error?.message.contains("no TLS version that both sides accept") == true, "\(String(describing: newer.error))")
        #expect(none.time < failsAtOnce && newer.time < failsAtOnce)
        print("TLS 1.2 without a client certificate: \(String(describing: none.error)); TLS 1.3 only: \(String(describing: newer.error))")
    }

    @Test func aHashedCADirectoryIsTrusted() async throws {
        let (server, tlsPort) = try RedisServer.startTLS()
        defer { server.stop() }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ca-dir-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try FileManager.default.copyItem(atPath: TestCertificates.shared.ca, toPath: directory.appendingPathComponent("ca.pem").path)
        let rehash = Process()
        rehash.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        rehash.arguments = ["openssl", "rehash", directory.path]
        try rehash.run()
        #expect(await rehash.waitForExit() == 0)
        let connection = try await RedisConnection.connect(
            to: try tlsConfiguration(port: tlsPort) { $0.tls?.trust = .certificateAuthorityDirectory(directory.path) })
        #expect(try await connection.ping() == "PONG")
        await connection.close()
        // A directory without the CA: the server's certificate is not trusted.
        let empty = directory.appendingPathComponent("empty")
        try FileManager.default.createDirectory(at: empty, withIntermediateDirectories: true)
        let untrusted = await connectFailure(
            try tlsConfiguration(port: tlsPort) { $0.tls?.trust = .certificateAuthorityDirectory(empty.path) })
        #expect(untrusted.error?.message.contains("not signed by a trusted CA") == true, "\(String(describing: untrusted.error))")
    }

    @Test func aCertificateThatDoesNotVerifyFailsAtOnceNamingWhy() async throws {
        let certificates = TestCertificates.shared
        let (server, tlsPort) = try RedisServer.startTLS()
        defer { server.stop() }
        let (expiredServer, expiredPort) = try RedisServer.startTLS(certificate: certificates.expiredServerCertificate)
        defer { expiredServer.stop() }
        let cases: [(String, RedisConfiguration, String)] = [
            ("unknown CA", try tlsConfiguration(port: tlsPort) { $0.tls?.trust = .certificateAuthorityFile(certificates.otherCA) },
             "not signed by a trusted CA"),
            ("system store", try tlsConfiguration(port: tlsPort) { $0.tls?.trust = .systemStore }, "not signed by a trusted CA"),
            ("name mismatch", try tlsConfiguration(port: tlsPort) { $0.tls?.serverName = "wrong.example" },
             "not for wrong.example"),
            ("IP mismatch", try tlsConfiguration(port: tlsPort) { $0.tls?.serverName = "127.0.0.2" }, "not for 127.0.0.2"),
            ("expired", try tlsConfiguration(port: expiredPort), "has expired"),
        ]
        for (name, configuration, expected) in cases {
            let (error, time) = await connectFailure(configuration)
            #expect(error?.code == .invalidConfiguration, "\(name): \(String(describing: error))")
            #expect(error?.message.contains("TLS certificate verification failed") == true, "\(name): \(String(describing: error))")
            #expect(error?.message.contains(expected) == true, "\(name): \(String(describing: error))")
            #expect(time < failsAtOnce, "\(name): \(time)")  // not retried until the connect timeout
        }
    }

    @Test func insecureNoVerificationConnectsToAnyCertificateAndSaysSo() async throws {
        let (server, tlsPort) = try RedisServer.startTLS(certificate: TestCertificates.shared.otherNameServerCertificate)
        defer { server.stop() }
        var configuration = try tlsConfiguration(port: tlsPort)
        let verified = await connectFailure(configuration)
        #expect(verified.error?.message.contains("not for 127.0.0.1") == true, "\(String(describing: verified.error))")
        configuration.tls?.trust = .insecureNoVerification
        #expect(configuration.description.contains("INSECURE"))
        let storage = CapturingLogHandler.Storage()
        let logger = Logger(label: "test") { _ in CapturingLogHandler(storage: storage) }
        let connection = try await RedisConnection.connect(to: configuration, logger: logger)
        #expect(try await connection.ping() == "PONG")
        await connection.close()
        #expect(storage.text.contains("TLS without verification"))
    }

    @Test func theWrongProtocolOnAPortFailsWithinTheConnectTimeoutNamingTheCause() async throws {
        let (server, tlsPort) = try RedisServer.startTLS()
        defer { server.stop() }
        // TLS to the plaintext port: Redis either answers the ClientHello with an error reply or waits for the rest
        // of a line that never comes.
        var tlsToPlain = try tlsConfiguration(port: server.port)
        tlsToPlain.connectTimeout = .seconds(2)
        let first = await connectFailure(tlsToPlain)
        print("TLS to a plaintext port: \(String(describing: first.error)) after \(first.time)")
        #expect(first.error?.message.contains("TLS") == true, "\(String(describing: first.error))")
        #expect(first.error?.message.contains("port") == true, "\(String(describing: first.error))")
        #expect(first.time < .seconds(12), "\(first.time)")  // the 2 s connect timeout, with a loaded machine's slack

        // Plaintext to the TLS port: the server closes the connection without a word.
        var plainToTLS = try RedisConfiguration(url: "redis://127.0.0.1:\(tlsPort)")
        plainToTLS.connectTimeout = .seconds(2)
        let second = await connectFailure(plainToTLS)
        print("plaintext to a TLS port: \(String(describing: second.error)) after \(second.time)")
        #expect(second.error?.message.contains("rediss://") == true, "\(String(describing: second.error))")
        #expect(second.time < .seconds(12), "\(second.time)")
    }

    @Test func filesThatCannotBeLoadedFailTheConnectAtOnceNamingThem() async throws {
        let (server, tlsPort) = try RedisServer.startTLS()
        defer { server.stop() }
        let missing = "/nonexistent/\(UUID().uuidString).pem"
        let certificates = TestCertificates.shared
        let cases: [(RedisConfiguration, String)] = [
            (try tlsConfiguration(port: tlsPort) { $0.tls?.trust = .certificateAuthorityFile(missing) }, missing),
            (try tlsConfiguration(port: tlsPort) { $0.tls?.certificateFile = missing }, missing),
            (try tlsConfiguration(port: tlsPort) {
                $0.tls?.certificateFile = certificates.clientCertificate
                $0.tls?.privateKeyFile = certificates.serverKey  // not the certificate's key
            }, certificates.serverKey),
        ]
        for (configuration, file) in cases {
            let (error, time) = await connectFailure(configuration)
            #expect(error?.code == .invalidConfiguration, "\(String(describing: error))")
            #expect(error?.message.contains(file) == true, "\(String(describing: error))")
            #expect(time < failsAtOnce)
        }
        // Not even a socket is opened for what validation refuses.
        var unix = try RedisConfiguration(url: "unix:///tmp/redis.sock")
        unix.tls = .default
        #expect(throws: RedisError.self) { try unix.validate() }
    }

    @Test func aSubscriberOverTLSResubscribesAfterAKillAndReportsTheGap() async throws {
        var (server, tlsPort) = try RedisServer.startTLS()
        let port = server.port
        defer { server.stop() }
        let configuration = try tlsConfiguration(port: tlsPort) {
            $0.connectTimeout = .seconds(3)
            $0.healthCheckInterval = .milliseconds(500)
        }
        let subscriber = try await Subscriber.connect(to: configuration)
        let publisher = try await Publisher.connect(to: configuration, retry: .whileReconnecting(upTo: .seconds(10)))
        let subscription = try await subscriber.subscribe(to: "tls-news")
        try await subscription.add(shardChannels: ["tls-shard"])
        let events = EventRecorder(subscription.events())
        #expect(try await publisher.publish("before", to: "tls-news") == 1)
        #expect(try await publisher.publish("sharded", toShard: "tls-shard") == 1)
        // Each message is read before the next kill: Redis counts a receiver when it queues the message and writes
        // to the publisher first, so a SIGKILL right after the reply can lose a message the subscriber never saw.
        var received = try await collect(subscription, 2).map(\.string)
        for round in 0..<3 {
            server.stop()  // SIGKILL: no close_notify, the TCP connection just ends
            _ = try await events.disconnected()
            (server, _) = try RedisServer.startTLS(tlsPort: tlsPort, port: port)
            let gap = try await events.resubscribed()
            #expect(gap > .zero)
            #expect(try await publisher.publish("after \(round)", to: "tls-news") == 1)
            received.append(try await subscription.nextMessage(timeout: .seconds(20))?.string ?? "(none)")
        }
        #expect(try await publisher.publish("sharded again", toShard: "tls-shard") == 1)
        received += try await collect(subscription, 1).map(\.string)
        #expect(received == ["before", "sharded", "after 0", "after 1", "after 2", "sharded again"])
        await publisher.close()
        await subscriber.close()
    }

    /// The server comes back with a certificate from another CA, and the client's CA file was replaced meanwhile:
    /// files are read again for every socket, so the reconnect trusts the new CA.
    @Test func aRotatedCAFileIsReadAgainOnReconnect() async throws {
        let certificates = TestCertificates.shared
        var (server, tlsPort) = try RedisServer.startTLS()
        let port = server.port
        defer { server.stop() }
        let trusted = FileManager.default.temporaryDirectory.appendingPathComponent("rotating-ca-\(UUID().uuidString).pem")
        defer { try? FileManager.default.removeItem(at: trusted) }
        try FileManager.default.copyItem(atPath: certificates.ca, toPath: trusted.path)
        let subscriber = try await Subscriber.connect(
            to: try tlsConfiguration(port: tlsPort) { $0.tls?.trust = .certificateAuthorityFile(trusted.path) })
        let subscription = try await subscriber.subscribe(to: "rotation")
        let events = EventRecorder(subscription.events())
        server.stop()
        _ = try await events.disconnected()
        // Replaced atomically, as deployment tools do: a reconnect attempt in between reads one file or the other.
        try Data(contentsOf: URL(fileURLWithPath: certificates.otherCA)).write(to: trusted, options: .atomic)
        (server, _) = try RedisServer.startTLS(certificate: certificates.otherCAServerCertificate, tlsPort: tlsPort, port: port)
        try await events.resubscribed()
        try await expectDelivery(of: "after the rotation", to: "rotation", through: server, subscription)
        await subscriber.close()
    }

    /// Publishes `text` on `server`'s plaintext port: one receiver, and `subscription` gets it.
    private func expectDelivery(
        of text: String, to channel: String, through server: RedisServer, _ subscription: Subscription
    ) async throws {
        let admin = try await RedisConnection.connect(to: .init(url: server.url))
        #expect(try await admin.publish(text, to: channel) == 1)
        #expect(try await collect(subscription, 1).map(\.string) == [text])
        await admin.close()
    }

    /// A rotation half done when a reconnect comes (the key replaced, the certificate not yet): the files as they
    /// were for the last connection are used, instead of ending the subscriber for good.
    @Test func aReconnectDuringAHalfDoneRotationUsesTheFilesThatWorkedLast() async throws {
        let certificates = TestCertificates.shared
        var (server, tlsPort) = try RedisServer.startTLS(clientCertificates: "yes")
        let port = server.port
        defer { server.stop() }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("rotating-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let certificate = directory.appendingPathComponent("client.crt"), key = directory.appendingPathComponent("client.key")
        try FileManager.default.copyItem(atPath: certificates.clientCertificate, toPath: certificate.path)
        try FileManager.default.copyItem(atPath: certificates.clientKey, toPath: key.path)
        let subscriber = try await Subscriber.connect(
            to: try tlsConfiguration(port: tlsPort) {
                $0.tls?.certificateFile = certificate.path
                $0.tls?.privateKeyFile = key.path
            })
        let subscription = try await subscriber.subscribe(to: "half-rotated")
        let events = EventRecorder(subscription.events())
        server.stop()
        _ = try await events.disconnected()
        // The new key is in place, its certificate is not: the pair does not match.
        try Data(contentsOf: URL(fileURLWithPath: certificates.serverKey)).write(to: key, options: .atomic)
        (server, _) = try RedisServer.startTLS(clientCertificates: "yes", tlsPort: tlsPort, port: port)
        try await events.resubscribed()
        try await expectDelivery(of: "still here", to: "half-rotated", through: server, subscription)
        await subscriber.close()
    }

    @Test func pipelinedPublishingFromTasksOnTheLoopAndMegabyteMessagesGoThroughTLS() async throws {
        let (server, tlsPort) = try RedisServer.startTLS()
        defer { server.stop() }
        let configuration = try tlsConfiguration(port: tlsPort)
        let subscriber = try await Subscriber.connect(to: configuration)
        let publisher = try await Publisher.connect(to: configuration)
        let subscription = try await subscriber.subscribe(to: "tls-many", "tls-large", bufferingPolicy: .unbounded)
        // Many tasks on the connection's executor, each publishing in order: one TLS write carries many commands.
        let tasks = 20, perTask = 500
        let counts = try await withThrowingTaskGroup(of: [Int].self) { group in
            for task in 0..<tasks {
                group.addTask(executorPreference: publisher.taskExecutor) {
                    var counts: [Int] = []
                    for index in 0..<perTask { counts.append(try await publisher.publish("\(task) \(index)", to: "tls-many")) }
                    return counts
                }
            }
            return try await group.reduce(into: []) { $0 += $1 }
        }
        #expect(counts.count == tasks * perTask && counts.allSatisfy { $0 == 1 })
        // A batch in one write, and a message of 1 MB (many TLS records each way).
        let large = [UInt8]((0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        #expect(try await publisher.publish(large, to: "tls-large") == 1)
        let messages = try await collect(subscription, tasks * perTask + 1)
        #expect(everyTasksMessagesInOrder(messages.dropLast(), tasks: tasks, perTask: perTask))
        #expect(messages.last?.payload == large)
        await subscriber.close()
        await publisher.close()
    }

    @Test func theHealthCheckOverTLSNoticesAFrozenServerAndTheConnectionComesBack() async throws {
        let (server, tlsPort) = try RedisServer.startTLS()
        defer { server.stop() }
        let configuration = try tlsConfiguration(port: tlsPort) {
            $0.healthCheckInterval = .milliseconds(300)
            $0.healthCheckTimeout = .milliseconds(300)
        }
        let connection = try await RedisConnection.connect(to: configuration)
        let events = EventRecorder(connection.events())
        server.pause()
        let cause = try await events.disconnected()
        #expect(cause.message.contains("health check"), "\(cause)")
        server.resume()
        try await events.reconnected()
        #expect(try await connection.ping() == "PONG")
        await connection.close()
    }
}
