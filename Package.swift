// swift-tools-version: 6.1
// MemWall: moves data across an inference host's memory hierarchy (DRAM, CXL,
// NVMe, RDMA) through libnuma, liburing, libibverbs/librdmacm and hwloc.
import PackageDescription

/// Settings every Swift target shares: Swift 6 mode already implies strict
/// concurrency; warnings are kept at zero by `make lint` (see Makefile).
let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "MemWall",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "MemWallCore", targets: ["MemWallCore"]),
        .library(name: "Topology", targets: ["Topology"]),
        .library(name: "Transport", targets: ["Transport"]),
        .library(name: "NUMATransport", targets: ["NUMATransport"]),
        .library(name: "URingTransport", targets: ["URingTransport"]),
        .library(name: "RDMATransport", targets: ["RDMATransport"]),
        .library(name: "KVPlacement", targets: ["KVPlacement"]),
        .executable(name: "memwall", targets: ["memwall"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // C libraries, one system-library target each (Modules/*/module.modulemap).
        .systemLibrary(name: "CNUMA", path: "Modules/CNUMA", pkgConfig: "numa",
                       providers: [.apt(["libnuma-dev"])]),
        .systemLibrary(name: "CIBVerbs", path: "Modules/CIBVerbs", pkgConfig: "libibverbs",
                       providers: [.apt(["libibverbs-dev"])]),
        .systemLibrary(name: "CRDMACM", path: "Modules/CRDMACM", pkgConfig: "librdmacm",
                       providers: [.apt(["librdmacm-dev"])]),
        .systemLibrary(name: "CURing", path: "Modules/CURing", pkgConfig: "liburing",
                       providers: [.apt(["liburing-dev"])]),
        .systemLibrary(name: "CHwloc", path: "Modules/CHwloc", pkgConfig: "hwloc",
                       providers: [.apt(["libhwloc-dev"])]),
        // What Swift cannot import by itself: _GNU_SOURCE constants, ioctls, macros.
        .target(name: "CMemWallShim", path: "Modules/CMemWallShim"),

        .target(name: "MemWallCore", dependencies: ["CMemWallShim"],
                swiftSettings: swiftSettings),
        .target(name: "Topology", dependencies: ["MemWallCore", "CHwloc", "CMemWallShim"],
                swiftSettings: swiftSettings),
        .target(name: "Transport", dependencies: ["MemWallCore", "CMemWallShim"],
                swiftSettings: swiftSettings),
        .target(name: "NUMATransport",
                dependencies: ["Transport", "MemWallCore", "CNUMA", "CMemWallShim"],
                swiftSettings: swiftSettings),
        .target(name: "URingTransport",
                dependencies: ["Transport", "MemWallCore", "CURing", "CMemWallShim"],
                swiftSettings: swiftSettings),
        .target(name: "RDMATransport",
                dependencies: ["Transport", "MemWallCore", "CIBVerbs", "CRDMACM", "CMemWallShim"],
                swiftSettings: swiftSettings),
        // The one conformance suite every Transport passes; a library (not a test
        // target) so each transport's tests, including RDMA's, can run it.
        .target(name: "TransportConformance", dependencies: ["Transport", "MemWallCore"],
                swiftSettings: swiftSettings),
        .target(name: "KVPlacement",
                dependencies: ["Transport", "Topology", "MemWallCore"],
                swiftSettings: swiftSettings),
        .executableTarget(
            name: "memwall",
            dependencies: [
                "MemWallCore", "Topology", "Transport", "NUMATransport", "URingTransport",
                "RDMATransport", "KVPlacement", "CNUMA", "CURing", "CIBVerbs", "CRDMACM",
                "CHwloc", "CMemWallShim",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings),

        .testTarget(name: "MemWallCoreTests", dependencies: ["MemWallCore"],
                    swiftSettings: swiftSettings),
        // Also the CLI's own argument handling (`@testable import memwall`).
        .testTarget(name: "TopologyTests",
                    dependencies: ["Topology", "MemWallCore", "memwall",
                                   .product(name: "ArgumentParser", package: "swift-argument-parser")],
                    exclude: ["Fixtures"],
                    swiftSettings: swiftSettings),
        .testTarget(name: "TransportTests",
                    dependencies: ["Transport", "NUMATransport", "URingTransport", "MemWallCore",
                                   "TransportConformance"],
                    swiftSettings: swiftSettings),
        .testTarget(name: "RDMATransportTests",
                    dependencies: ["RDMATransport", "Transport", "MemWallCore", "TransportConformance"],
                    swiftSettings: swiftSettings),
        .testTarget(name: "KVPlacementTests",
                    dependencies: ["KVPlacement", "Transport", "NUMATransport", "URingTransport",
                                   "Topology", "MemWallCore"],
                    swiftSettings: swiftSettings),
        // Host probes, the CLI's handling of bad input, and the lab guest's identity.
        .testTarget(name: "ProbeTests",
                    dependencies: ["MemWallCore", "Transport", "NUMATransport", "URingTransport",
                                   "RDMATransport", "CURing", "CMemWallShim"],
                    swiftSettings: swiftSettings),
    ]
)

// MARK: - The C ABI (issue 13): libmemwall for C, C++, Python and Rust runtimes
//
// Kept apart from the list above so the Swift layers stay untouched. The product is named
// MemWallC, not memwall: a library product sharing the executable's name makes SwiftPM drop
// the executable. The file is installed (and carried in the Python wheel) as libmemwall.so;
// its SONAME says so. The Swift runtime and Foundation are linked in statically
// (-static-stdlib), so the library needs no Swift toolchain where it runs, and a version
// script exports the mw_* functions of include/memwall.h and nothing else.
package.products += [
    .library(name: "MemWallC", type: .dynamic, targets: ["MemWallC"]),
]
package.targets += [
    // What every report shared by the CLI and the C ABI needs (capabilities, stable JSON).
    .target(name: "HostCapabilities",
            dependencies: ["MemWallCore", "Topology", "Transport", "NUMATransport", "URingTransport",
                           "RDMATransport", "CHwloc"],
            swiftSettings: swiftSettings),
    // include/memwall.h (through a module map) and the thread-local last-error buffer.
    .target(name: "CMemWallABI", path: "Modules/CMemWallABI", exclude: ["exports.map"]),
    .target(name: "MemWallC",
            dependencies: ["CMemWallABI", "HostCapabilities", "KVPlacement", "Topology", "Transport",
                           "NUMATransport", "URingTransport", "MemWallCore"],
            swiftSettings: swiftSettings + [.unsafeFlags(["-static-stdlib"], .when(platforms: [.linux]))],
            linkerSettings: [
                .unsafeFlags(["-static-stdlib",
                              "-Xlinker", "-soname=libmemwall.so.1",
                              "-Xlinker", "--version-script=\(Context.packageDirectory)/Modules/CMemWallABI/exports.map"],
                             .when(platforms: [.linux])),
            ]),
]
if let cli = package.targets.first(where: { $0.name == "memwall" }) {
    cli.dependencies.append("HostCapabilities")
    cli.dependencies.append("KVPool")
}
if let abi = package.targets.first(where: { $0.name == "MemWallC" }) {
    abi.dependencies.append("KVPool")
}
// MARK: - The host-wide KV pool (issue 14): one shared segment, attached by every process

package.products += [
    .library(name: "KVPool", targets: ["KVPool"]),
]
package.targets += [
    .target(name: "KVPool",
            dependencies: ["KVPlacement", "NUMATransport", "Transport", "MemWallCore", "CMemWallShim"],
            swiftSettings: swiftSettings),
    .testTarget(name: "KVPoolTests",
                dependencies: ["KVPool", "KVPlacement", "NUMATransport", "Transport", "MemWallCore", "CMemWallShim"],
                swiftSettings: swiftSettings),
]
package.targets += [
    // Builds C programs against include/memwall.h and the built libmemwall, and runs them.
    .testTarget(name: "CABITests", dependencies: ["KVPlacement"], swiftSettings: swiftSettings),
]
