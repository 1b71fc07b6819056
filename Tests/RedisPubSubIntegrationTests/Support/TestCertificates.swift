import Foundation

/// Throwaway certificates made with the `openssl` command: a CA, a server certificate for `localhost` and
/// `127.0.0.1`, a client certificate, and a second CA nobody trusts.
struct TestCertificates: Sendable {
    let directory: URL
    var ca: String { directory.appendingPathComponent("ca.crt").path }
    var serverCertificate: String { directory.appendingPathComponent("server.crt").path }
    var serverKey: String { directory.appendingPathComponent("server.key").path }
    var clientCertificate: String { directory.appendingPathComponent("client.crt").path }
    var clientKey: String { directory.appendingPathComponent("client.key").path }
    var otherCA: String { directory.appendingPathComponent("other-ca.crt").path }

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
            process.waitUntilExit()
            precondition(process.terminationStatus == 0, "openssl \(arguments.joined(separator: " ")) failed")
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
        return TestCertificates(directory: directory)
    }()
}
