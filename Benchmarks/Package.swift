// swift-tools-version:6.0
// The benchmarks: a nested package, so the library's users never build its dependencies.
//   swift run -c release --package-path Benchmarks pubsub-bench compare
import PackageDescription

let package = Package(
    name: "Benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "swift-redis-pubsub", path: ".."),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.1.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CHiredisBench",
            pkgConfig: "hiredis",
            providers: [.apt(["libhiredis-dev"]), .brew(["hiredis"])]
        ),
        .systemLibrary(
            name: "COpenSSLBench",
            pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"]), .brew(["openssl@3"])]
        ),
        .target(name: "HiredisBaseline", dependencies: ["CHiredisBench", "COpenSSLBench"]),
        .executableTarget(
            name: "pubsub-bench",
            dependencies: [
                "HiredisBaseline",
                .product(name: "RedisPubSub", package: "swift-redis-pubsub"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
    ]
)
