#if canImport(Glibc)
import Glibc
#endif
@preconcurrency import CNUMA
import FoundationEssentials
import MemWallCore
import Transport

/// What libnuma says about this host's memory nodes, found by really calling it.
public struct NUMAProbe: Sendable, Codable, Hashable {
    /// One memory node as libnuma sees it.
    public struct Node: Sendable, Codable, Hashable {
        /// Node number.
        public var id: Int
        /// Capacity in bytes (`numa_node_size64`).
        public var memoryBytes: Int64
        /// Free bytes now.
        public var freeBytes: Int64
        /// CPUs local to the node; 0 for a CXL type-3 expander or other memory-only node.
        public var cpuCount: Int
        /// Firmware (ACPI HMAT) figures from the node's nearest initiators, as the
        /// kernel publishes them in `access0/initiators/`; `nil` when absent or zero.
        public var firmwareFigures: FirmwareFigures?
        /// True when no CPU is local to the node.
        public var isCPUless: Bool { cpuCount == 0 }
    }

    /// HMAT latency and bandwidth of a node as seen from its nearest initiators.
    public struct FirmwareFigures: Sendable, Codable, Hashable {
        /// Read latency in nanoseconds.
        public var readLatencyNanoseconds: Int?
        /// Write latency in nanoseconds.
        public var writeLatencyNanoseconds: Int?
        /// Read bandwidth in MiB/s (the kernel's unit).
        public var readBandwidthMiBps: Int?
        /// Write bandwidth in MiB/s.
        public var writeBandwidthMiBps: Int?

        /// Reads `/sys/devices/system/node/node<id>/access0/initiators/*` under `root`.
        /// Zero values (some firmware publishes all-zero tables) count as missing.
        public static func read(node: Int, root: String = "") -> FirmwareFigures? {
            let dir = root + "/sys/devices/system/node/node\(node)/access0/initiators/"
            func value(_ name: String) -> Int? {
                guard let text = try? String(contentsOfFile: dir + name, encoding: .utf8),
                      let v = Int(text.trimmingWhitespace()), v > 0 else { return nil }
                return v
            }
            let f = FirmwareFigures(readLatencyNanoseconds: value("read_latency"),
                                    writeLatencyNanoseconds: value("write_latency"),
                                    readBandwidthMiBps: value("read_bandwidth"),
                                    writeBandwidthMiBps: value("write_bandwidth"))
            let all: [Int?] = [f.readLatencyNanoseconds, f.writeLatencyNanoseconds, f.readBandwidthMiBps, f.writeBandwidthMiBps]
            return all.allSatisfy { $0 == nil } ? nil : f
        }
    }

    /// `numa_available()` succeeded.
    public var available: Bool
    /// Why NUMA is not usable, when it is not.
    public var reason: String?
    /// Every node with memory.
    public var nodes: [Node]
    /// Whether `move_pages(2)` answered a page-location query (seccomp can refuse it).
    public var pageMigrationUsable: Bool
    /// What `move_pages` said when it refused.
    public var pageMigrationError: String?

    /// Nodes that have memory but no CPUs: how Linux shows CXL type-3 memory.
    public var cpulessNodes: [Int] { nodes.filter(\.isCPUless).map(\.id) }

    /// Queries libnuma and the kernel.
    public static func probe() -> NUMAProbe {
        guard numa_available() >= 0 else {
            return NUMAProbe(available: false,
                             reason: "libnuma reports no NUMA support (numa_available() < 0); a far-memory pool will be emulated",
                             nodes: [], pageMigrationUsable: false, pageMigrationError: nil)
        }
        var nodes: [Node] = []
        let maxNode = numa_max_node()
        if maxNode >= 0, let cpus = numa_allocate_cpumask() {
            defer { numa_free_cpumask(cpus) }
            for id in 0...maxNode {
                // Node numbers can have holes; a node without memory reports a negative size.
                guard numa_bitmask_isbitset(numa_all_nodes_ptr, UInt32(id)) != 0 else { continue }
                var free: Int64 = 0
                let size = numa_node_size64(id, &free)
                guard size > 0 else { continue }
                var cpuCount = 0
                if numa_node_to_cpus(id, cpus) == 0 { cpuCount = Int(numa_bitmask_weight(cpus)) }
                nodes.append(Node(id: Int(id), memoryBytes: size, freeBytes: free, cpuCount: cpuCount,
                                   firmwareFigures: FirmwareFigures.read(node: Int(id))))
            }
        }
        let (usable, error) = probePageMigration()
        return NUMAProbe(available: true, reason: nil, nodes: nodes,
                         pageMigrationUsable: usable, pageMigrationError: error)
    }

    /// Asks `move_pages` where one freshly touched page lives (nodes == NULL is a query).
    private static func probePageMigration() -> (Bool, String?) {
        let page = PageSize.bytes
        guard let p = mmap(nil, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              p != MAP_FAILED else {
            return (false, "mmap failed: \(Errno.current)")
        }
        defer { munmap(p, page) }
        p.storeBytes(of: 1, as: UInt8.self)
        var pages: [UnsafeMutableRawPointer?] = [p]
        var status: [Int32] = [-1]
        let r = move_pages(0, 1, &pages, nil, &status, 0)
        if r != 0 { return (false, "move_pages: \(Errno.current)") }
        if status[0] < 0 { return (false, "move_pages page status: \(Errno(rawValue: -status[0]))") }
        return (true, nil)
    }
}
