// swift-tools-version: 6.1
// MemWall's benchmarks: a package of its own so the main package builds in
// seconds without package-benchmark and its dependencies.
import PackageDescription

let package = Package(
    name: "MemWallBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "MemWall", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "CoreBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "MemWallCore", package: "MemWall"),
            ],
            path: "Benchmarks/CoreBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
