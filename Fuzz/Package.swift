// swift-tools-version: 6.1
// MemWall's libFuzzer targets: a package of its own (like Benchmarks/) so the
// main build never needs the fuzzer runtime. Build with scripts/fuzz, which
// passes -sanitize=fuzzer,address, -parse-as-library (libFuzzer supplies main)
// and -enable-testing (the decoders are internal to their modules).
import PackageDescription

/// One fuzz target: its driver glue plus the MemWall libraries it feeds.
func fuzzTarget(_ name: String, _ libraries: [String]) -> Target {
    .executableTarget(name: name,
                      dependencies: ["FuzzSupport"] + libraries.map { .product(name: $0, package: "MemWall") })
}

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
        fuzzTarget("FuzzFrame", ["RDMATransport", "Transport", "MemWallCore"]),
        // The export table (TCP emulation, socket exchange, rdmacm SEND) and the socket exchange's hello/reply heads.
        fuzzTarget("FuzzExportTable", ["RDMATransport", "MemWallCore"]),
        // The Mooncake trace reader, and a replay of what it accepts against the cache's invariants.
        fuzzTarget("FuzzTrace", ["KVPlacement", "MemWallCore"]),
        // `memwall topo --xml`: the XML checks, hwloc's import and what is copied out of it.
        fuzzTarget("FuzzTopologyXML", ["Topology", "MemWallCore"]),
    ]
)
