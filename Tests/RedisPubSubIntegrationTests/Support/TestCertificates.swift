import Foundation

/// Throwaway certificates made with the `openssl` command: a CA, a server certificate for `localhost` and
/// `127.0.0.1`, the same key with an expired certificate and with one for another name, a client certificate, a
/// client certificate from a CA the server does not trust, and a second CA nobody trusts.
struct TestCertificates: Sendable {
    let directory: URL
    var ca: String { directory.appendingPathComponent("ca.crt").path }
    var serverCertificate: String { directory.appendingPathComponent("server.crt").path }
    var serverKey: String { directory.appendingPathComponent("server.key").path }
    var clientCertificate: String { directory.appendingPathComponent("client.crt").path }
    var clientKey: String { directory.appendingPathComponent("client.key").path }
    var otherCA: String { directory.appendingPathComponent("other-ca.crt").path }
    /// For `serverKey`, valid until yesterday.
    var expiredServerCertificate: String { directory.appendingPathComponent("expired.crt").path }
    /// For `serverKey`, naming only `other.example`.
    var otherNameServerCertificate: String { directory.appendingPathComponent("other-name.crt").path }
    /// For `serverKey` and the same names as `serverCertificate`, signed by `otherCA`.
    var otherCAServerCertificate: String { directory.appendingPathComponent("other-ca-server.crt").path }
    /// For `clientKey`, signed by `otherCA`.
    var untrustedClientCertificate: String { directory.appendingPathComponent("untrusted-client.crt").path }

    static let shared: TestCertificates = {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("redis-pubsub-tls-\(UUID().uuidString)")
        try! FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        func openssl(_ arguments: [String]) {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["openssl"] + arguments
            process.currentDirectoryURL = directory
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try! process.run()
            precondition(process.waitForExit() == 0, "openssl \(arguments.joined(separator: " ")) failed")
        }
        let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for ca in ["ca", "other-ca"] {
            openssl(["req", "-x509"] + key + ["-keyout", "\(ca).key", "-out", "\(ca).crt", "-days", "2", "-subj", "/CN=\(ca)"])
        }
        for (name, extensions) in [("server", "subjectAltName=DNS:localhost,IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")] {
            try! extensions.write(to: directory.appendingPathComponent("\(name).ext"), atomically: true, encoding: .utf8)
            openssl(["req"] + key + ["-keyout", "\(name).key", "-out", "\(name).csr", "-subj", "/CN=\(name)"])
            openssl(["x509", "-req", "-in", "\(name).csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                     "-out", "\(name).crt", "-days", "2", "-extfile", "\(name).ext"])
        }
        try! "subjectAltName=DNS:other.example".write(
            to: directory.appendingPathComponent("other-name.ext"), atomically: true, encoding: .utf8)
        for (output, csr, ca, days, ext) in [
            ("expired.crt", "server.csr", "ca", "-1", "server.ext"),
            ("other-name.crt", "server.csr", "ca", "2", "other-name.ext"),
            ("untrusted-client.crt", "client.csr", "other-ca", "2", "client.ext"),
            ("other-ca-server.crt", "server.csr", "other-ca", "2", "server.ext"),
        ] {
            openssl(["x509", "-req", "-in", csr, "-CA", "\(ca).crt", "-CAkey", "\(ca).key", "-CAcreateserial",
                     "-out", output, "-days", days, "-extfile", ext])
        }
        return TestCertificates(directory: directory)
    }()
}
