// swift-tools-version: 6.1
// MemWall's libFuzzer targets: a package of its own (like Benchmarks/) so the
// main build never needs the fuzzer runtime. Build with scripts/fuzz, which
// passes -sanitize=fuzzer,address, -parse-as-library (libFuzzer supplies main)
// and -enable-testing (the decoders are internal to their modules).
import PackageDescription

let package = Package(
    name: "MemWallFuzz",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "MemWall", path: ".."),
    ],
    targets: [
        // libFuzzer's driver entry point, which every target's `<Target>_main` calls.
        .target(name: "FuzzSupport"),
        // The TCP emulation's frame headers, both directions, and the listener's bounds check.
        .executableTarget(name: "FuzzFrame", dependencies: [
            "FuzzSupport",
            .product(name: "RDMATransport", package: "MemWall"),
            .product(name: "Transport", package: "MemWall"),
            .product(name: "MemWallCore", package: "MemWall"),
        ]),
        // The export table (TCP emulation, socket exchange, rdmacm SEND) and the socket exchange's hello/reply heads.
        .executableTarget(name: "FuzzExportTable", dependencies: [
            "FuzzSupport",
            .product(name: "RDMATransport", package: "MemWall"),
            .product(name: "MemWallCore", package: "MemWall"),
        ]),
        // The Mooncake trace reader, and a replay of what it accepts against the cache's invariants.
        .executableTarget(name: "FuzzTrace", dependencies: [
            "FuzzSupport",
            .product(name: "KVPlacement", package: "MemWall"),
            .product(name: "MemWallCore", package: "MemWall"),
        ]),
        // `memwall topo --xml`: the XML checks, hwloc's import and what is copied out of it.
        .executableTarget(name: "FuzzTopologyXML", dependencies: [
            "FuzzSupport",
            .product(name: "Topology", package: "MemWall"),
            .product(name: "MemWallCore", package: "MemWall"),
        ]),
    ]
)
