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
        ("rediss://", "missing host"),
        ("rediss://host:70000", "out of range"),
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

    @Test func redissTurnsOnVerifiedTLSWithTheSameShapeAsRedis() throws {
        let configuration = try RedisConfiguration(url: "rediss://app:hunter2@cache.example:6380/3")
        #expect(configuration.endpoint == .tcp(host: "cache.example", port: 6380))
        #expect(configuration.username == "app" && configuration.password == "hunter2" && configuration.database == 3)
        #expect(configuration.tls == .default)
        #expect(configuration.tls?.trust == .systemStore && configuration.tls?.verifiesServer == true)
        #expect(configuration.tls?.serverName == nil && configuration.tls?.minimumVersion == .tls1_2)
        #expect(configuration.description == "rediss://app:***@cache.example:6380/3")
        #expect(try RedisConfiguration(url: "REDISS://[::1]").tls == .default)
        #expect(try RedisConfiguration(url: "redis://h").tls == nil)
        #expect(try RedisConfiguration(url: "rediss://h").endpoint == .tcp(host: "h", port: 6379))
    }

    @Test func tlsSettingsShowInTheDescriptionAndInsecureSaysSo() throws {
        var configuration = try RedisConfiguration(url: "rediss://:pw@h:1")
        configuration.tls = .init(
            trust: .certificateAuthorityFile("/etc/ca.pem"), certificateFile: "/etc/client.pem", serverName: "redis.internal",
            minimumVersion: .tls1_3)
        #expect(
            configuration.description
                == "rediss://:***@h:1 TLS (CA file /etc/ca.pem, client certificate /etc/client.pem, server name redis.internal, TLS 1.3 or later)")
        configuration.tls?.trust = .insecureNoVerification
        #expect(configuration.tls?.verifiesServer == false)
        #expect(configuration.description.contains("INSECURE: no verification"))
        #expect(!String(reflecting: configuration).contains("pw"))
        #expect(String(describing: Mirror(reflecting: configuration).descendant("tls")).contains("INSECURE"))
        #expect(RedisConfiguration.TLS.ProtocolVersion.tls1_2 < .tls1_3)
    }

    @Test func tlsSettingsThatCannotWorkAreRefusedByValidate() {
        func refused(_ tls: RedisConfiguration.TLS, endpoint: RedisConfiguration.Endpoint = .tcp(host: "h", port: 1)) -> String? {
            do {
                try RedisConfiguration(endpoint: endpoint, tls: tls).validate()
                return nil
            } catch {
                return error.code == .invalidConfiguration ? error.message : "\(error)"
            }
        }
        #expect(refused(.default) == nil)
        #expect(refused(.default, endpoint: .unixSocket(path: "/tmp/s"))?.contains("Unix socket") == true)
        #expect(refused(.init(privateKeyFile: "/k.pem"))?.contains("needs its certificate") == true)
        #expect(refused(.init(trust: .certificateAuthorityFile("")))?.contains("CA path is empty") == true)
        #expect(refused(.init(certificateFile: ""))?.contains("certificate path is empty") == true)
        #expect(refused(.init(serverName: ""))?.contains("not a host name") == true)
        #expect(refused(.init(serverName: "a b"))?.contains("not a host name") == true)
        #expect(refused(.init(certificateFile: "/c.pem", serverName: "redis.internal")) == nil)
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
        #expect(throws: RedisError.self) { try RedisConfiguration(maximumPendingCommands: 0).validate() }
        #expect(throws: RedisError.self) { try RedisConfiguration(maximumPendingBytes: 0).validate() }
        #expect(throws: Never.self) { try RedisConfiguration(clientName: "worker-1").validate() }
    }

    @Test(arguments: [
        "redis:/:secret@h", ":secret@h:6379", "redis://h?password=secret", "redis://h?db=1&password=secret",
        "redis://:secret", "redis://u:secret@h:99999", "redis://u:se#cret@h:bad", "redis://:pa@ss?word@h:x",
        "redis://h:6379/secret", "redis://h#secret", "unix://:secret@/tmp/r.sock?x=1", "rediss://:secret@h",
        "http://:secret@h", "secret", "redis://secret@", "redis://[::1:secret@h", "redis://u:secret@[::1",
        "redis://u%:secret@h", "redis://se:cret:more@h:port", "unix:/:secret@/tmp/s", "REDIS://:secret@h:0",
        "redis://h:secret", "redis://:secret@h?db=abc", "unix://u:secret@relative", "redis://u:secret:6379",
        "redis://:secret:6379", "unix://:p@/secret@/tmp/s", "redis://[::1]:secret", "redis://[::1:secret",
        "redis://my secret", "redis://a b:secret@h", 
    ])
    func noURLShapeLeaksItsPassword(url: String) {
        #expect(!RedisConfiguration.redact(url).contains("secret"), "\(RedisConfiguration.redact(url))")
        do {
            let configuration = try RedisConfiguration(url: url)
            #expect(!configuration.description.contains("secret"))
        } catch {
            #expect(!error.message.contains("secret"), "\(error.message)")
            #expect(!"\(error)".contains("secret"))
        }
        do {
            #expect(!"\(try RedisConfiguration.fromEnvironment(value: url))".contains("secret"))
        } catch {
            #expect(!error.message.contains("secret"), "\(error.message)")
        }
    }

    @Test func redactionKeepsWhatHelpsAndMasksTheRest() {
        #expect(RedisConfiguration.redact("redis://app:pw@cache:6380/2") == "redis://app:***@cache:6380/2")
        #expect(RedisConfiguration.redact("redis://pw@cache") == "redis://***@cache")
        #expect(RedisConfiguration.redact("redis://cache:6379?db=3&x") == "redis://cache:6379?db=***&x")
        #expect(RedisConfiguration.redact("redis://cache:port") == "redis://cache:***")
        #expect(RedisConfiguration.redact("unix:///tmp/a@b.sock") == "unix:///tmp/a@b.sock")
        #expect(RedisConfiguration.redact(":pw@h:6379") == "(not shown: not a URL)")
        #expect(RedisConfiguration.redact("redis:/:pw@h") == "redis:... (the rest is not shown)")
    }

    @Test func dumpMirrorAndDebugDescriptionMaskThePassword() {
        let configuration = RedisConfiguration(username: "app", password: "hunter2", clientName: "worker")
        var dumped = ""
        dump(configuration, to: &dumped)
        #expect(!dumped.contains("hunter2") && dumped.contains("***") && dumped.contains("worker"))
        #expect(!String(reflecting: configuration).contains("hunter2"))
        #expect(!configuration.debugDescription.contains("hunter2"))
        let children = Mirror(reflecting: configuration).children.map { "\($0.label ?? ""): \($0.value)" }.joined()
        #expect(!children.contains("hunter2") && children.contains("username"))
        #expect(!"\(RedisConfiguration(password: "hunter2"))".contains("hunter2"))
    }

    @Test func unixSocketPathsMayContainAnAtSign() throws {
        let plain = try RedisConfiguration(url: "unix:///tmp/a@b.sock")
        #expect(plain.endpoint == .unixSocket(path: "/tmp/a@b.sock"))
        #expect(plain.password == nil)
        let authenticated = try RedisConfiguration(url: "unix://:pw@/tmp/a@b.sock?db=2")
        #expect(authenticated.endpoint == .unixSocket(path: "/tmp/a@b.sock"))
        #expect(authenticated.password == "pw" && authenticated.database == 2)
        #expect(authenticated.description == "unix://:***@/tmp/a@b.sock?db=2")
    }

    @Test func ipv6ScopesAreKept() throws {
        let configuration = try RedisConfiguration(url: "redis://[fe80::1%25lo]:6380")
        #expect(configuration.endpoint == .tcp(host: "fe80::1%lo", port: 6380))
        #expect(configuration.description == "redis://[fe80::1%25lo]:6380")
        #expect(try RedisConfiguration(url: configuration.description) == configuration)
        #expect(try RedisConfiguration(url: "redis://[fe80::1%lo]").endpoint == .tcp(host: "fe80::1%lo", port: 6379))
        #expect(AddressResolver.isNumeric("fe80::1%lo"))
        #expect(AddressResolver.isNumeric("::1") && AddressResolver.isNumeric("127.0.0.1"))
        #expect(!AddressResolver.isNumeric("localhost"))
        // Resolving keeps the scope that inet_ntop would drop.
        guard case .success(let addresses) = AddressResolver.resolveBlocking(host: "fe80::1%lo", port: 6380) else {
            Issue.record("a numeric link-local address did not resolve")
            return
        }
        #expect(addresses == [.tcp(ip: "fe80::1%lo", port: 6380)])
    }
}
