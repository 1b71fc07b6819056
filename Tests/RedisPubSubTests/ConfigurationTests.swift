import Testing
@testable import RedisPubSub

@Suite("RedisConfiguration URL parsing")
struct ConfigurationTests {
    @Test func plainHostDefaultsPortAndDatabase() throws {
        let configuration = try RedisConfiguration(url: "redis://cache.internal")
        #expect(configuration.endpoint == .tcp(host: "cache.internal", port: 6379))
        #expect(configuration.database == 0)
        #expect(configuration.username == nil)
        #expect(configuration.password == nil)
    }

    @Test func hostPortDatabase() throws {
        let configuration = try RedisConfiguration(url: "redis://127.0.0.1:6380/4")
        #expect(configuration.endpoint == .tcp(host: "127.0.0.1", port: 6380))
        #expect(configuration.database == 4)
    }

    @Test func passwordOnly() throws {
        let a = try RedisConfiguration(url: "redis://:s3cret@host:1")
        #expect(a.username == nil)
        #expect(a.password == "s3cret")
        let b = try RedisConfiguration(url: "redis://s3cret@host")
        #expect(b.username == nil)
        #expect(b.password == "s3cret")
    }

    @Test func userAndPercentEncodedPassword() throws {
        let configuration = try RedisConfiguration(url: "redis://app:p%40ss%3Aw0rd@host:7000/1")
        #expect(configuration.username == "app")
        #expect(configuration.password == "p@ss:w0rd")
        #expect(configuration.endpoint == .tcp(host: "host", port: 7000))
        #expect(configuration.database == 1)
    }

    @Test func passwordContainingAtSign() throws {
        let configuration = try RedisConfiguration(url: "redis://app:a@b@host")
        #expect(configuration.password == "a@b")
        #expect(configuration.endpoint == .tcp(host: "host", port: 6379))
    }

    @Test func ipv6() throws {
        #expect(try RedisConfiguration(url: "redis://[::1]:6390").endpoint == .tcp(host: "::1", port: 6390))
        #expect(try RedisConfiguration(url: "redis://[::1]").endpoint == .tcp(host: "::1", port: 6379))
    }

    @Test func unixSocket() throws {
        let configuration = try RedisConfiguration(url: "unix:///var/run/redis/redis.sock?db=3")
        #expect(configuration.endpoint == .unixSocket(path: "/var/run/redis/redis.sock"))
        #expect(configuration.database == 3)
        let withAuth = try RedisConfiguration(url: "unix://:pw@/tmp/r.sock")
        #expect(withAuth.password == "pw")
        #expect(withAuth.endpoint == .unixSocket(path: "/tmp/r.sock"))
    }

    @Test func schemeIsCaseInsensitive() throws {
        #expect(try RedisConfiguration(url: "REDIS://h:1").endpoint == .tcp(host: "h", port: 1))
    }

    @Test(arguments: [
        ("", "expected redis://"),
        ("localhost:6379", "expected redis://"),
        ("http://host", "unknown scheme 'http'"),
        ("rediss://host", "TLS"),
        ("redis://", "missing host"),
        ("redis://:6379", "missing host"),
        ("redis://host:0", "out of range"),
        ("redis://host:65536", "out of range"),
        ("redis://host:-1", "out of range"),
        ("redis://host:port", "port is not a number"),
        ("redis://host:6379/x", "database in the path"),
        ("redis://host:6379/-2", "database in the path"),
        ("redis://host?foo=1", "unknown query parameter"),
        ("redis://[::1", "unterminated IPv6"),
        ("redis://::1:6379", "IPv6 addresses must be written in brackets"),
        ("redis://user:@host", "a user name needs a password"),
        ("redis://u:%zz@host", "percent-encoding"),
        ("unix://relative.sock", "absolute socket path"),
        ("unix:///tmp/r.sock?db=abc", "database in db="),
    ])
    func malformedURLsAreRejected(url: String, reason: String) {
        #expect {
            try RedisConfiguration(url: url)
        } throws: { error in
            guard let error = error as? RedisError else { return false }
            return error.code == .invalidConfiguration && error.message.contains(reason)
        }
    }

    @Test func passwordsNeverShow() throws {
        let configuration = try RedisConfiguration(url: "redis://app:hunter2@host:6379/2")
        #expect(configuration.description == "redis://app:***@host:6379/2")
        #expect(!"\(configuration)".contains("hunter2"))
        do {
            _ = try RedisConfiguration(url: "redis://app:hunter2@host:99999")
            Issue.record("expected an error")
        } catch {
            #expect(error.code == .invalidConfiguration)
            #expect(!error.message.contains("hunter2"))
            #expect(error.message.contains("app:***@host:99999"))
        }
    }

    @Test func environmentDefault() throws {
        #expect(try RedisConfiguration.fromEnvironment(value: nil).endpoint == .tcp(host: "127.0.0.1", port: 6379))
        #expect(try RedisConfiguration.fromEnvironment(value: "").endpoint == .tcp(host: "127.0.0.1", port: 6379))
        #expect(try RedisConfiguration.fromEnvironment(value: "redis://10.1.2.3:7777").endpoint == .tcp(host: "10.1.2.3", port: 7777))
        #expect(throws: RedisError.self) { try RedisConfiguration.fromEnvironment(value: "nonsense") }
    }

    @Test func validateCatchesHandMadeMistakes() {
        #expect(throws: RedisError.self) { try RedisConfiguration(endpoint: .tcp(host: "h", port: 70000)).validate() }
        #expect(throws: RedisError.self) { try RedisConfiguration(database: -1).validate() }
        #expect(throws: RedisError.self) { try RedisConfiguration(connectTimeout: .zero).validate() }
        #expect(throws: RedisError.self) { try RedisConfiguration(username: "u").validate() }
        #expect(throws: RedisError.self) { try RedisConfiguration(clientName: "has space").validate() }
        #expect(throws: Never.self) { try RedisConfiguration(clientName: "worker-1").validate() }
    }
}
