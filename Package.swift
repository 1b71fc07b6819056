// swift-tools-version:6.0
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "swift-redis-pubsub",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "RedisPubSub", targets: ["RedisPubSub"]),
        .executable(name: "subscriber", targets: ["subscriber"]),
        .executable(name: "publisher", targets: ["publisher"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CHiredis",
            pkgConfig: "hiredis",
            providers: [.apt(["libhiredis-dev"]), .brew(["hiredis"])]
        ),
        // TLS is the package's own (hiredis 0.14 has none), through the system's OpenSSL.
        .systemLibrary(
            name: "COpenSSL",
            pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"]), .brew(["openssl@3"])]
        ),
        .target(
            name: "RedisPubSub",
            dependencies: [
                "CHiredis",
                "COpenSSL",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "HeapModule", package: "swift-collections"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The notifications demo: `swift run subscriber`, `swift run publisher`.
        .target(
            name: "DemoSupport",
            dependencies: [
                "RedisPubSub",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            path: "Examples/DemoSupport",
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "subscriber",
            dependencies: [
                "RedisPubSub", "DemoSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Examples/Subscriber",
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "publisher",
            dependencies: [
                "RedisPubSub", "DemoSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Examples/Publisher",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "RedisPubSubTests",
            dependencies: ["RedisPubSub", .product(name: "DequeModule", package: "swift-collections")],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "RedisPubSubIntegrationTests",
            dependencies: [
                "RedisPubSub",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)
