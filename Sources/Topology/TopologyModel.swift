import MemWallCore

/// Where a ``Topology`` was read from.
public enum TopologySource: Sendable, Hashable, CustomStringConvertible {
    /// The running machine: hwloc's live discovery plus `/sys`.
    case live
    /// An hwloc XML export (`lstopo --of xml`); no sysfs is consulted.
    case xml(path: String)
    /// An extracted sysfs/procfs snapshot read as if it were `/` (hwloc's `HWLOC_FSROOT`).
    case fsroot(path: String)
    /// An hwloc synthetic description such as `"pack:2 numa:2 core:4 pu:1"`.
    case synthetic(String)

    /// Stable identifier used in JSON: `live`, `xml`, `fsroot` or `synthetic`.
    public var kind: String {
        switch self {
        case .live: "live"
        case .xml: "xml"
        case .fsroot: "fsroot"
        case .synthetic: "synthetic"
        }
    }

    /// The path or description given, `nil` for the live machine.
    public var argument: String? {
        switch self {
        case .live: nil
        case .xml(let path), .fsroot(let path): path
        case .synthetic(let description): description
        }
    }

    /// `live`, `xml FILE`, `fsroot DIR`, `synthetic "…"`.
    public var description: String {
        switch self {
        case .live: "live machine"
        case .xml(let path): "hwloc XML \(path)"
        case .fsroot(let path): "sysfs snapshot \(path)"
        case .synthetic(let text): "synthetic \"\(text)\""
        }
    }
}

/// What a memory node is made of, as far as the evidence tells.
///
/// The cases are declared fastest first; ``nominalOrder`` is the order tiers
/// are ranked in when nothing measured says otherwise.
public enum MemoryKind: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// High-bandwidth memory on the package (HBM, Knights Landing MCDRAM).
    case hbm
    /// Ordinary DRAM next to the CPUs.
    case dram
    /// Memory behind a link, slower than DRAM: CXL type-3 expanders and other CPU-less far nodes.
    case farMemory = "far-memory"
    /// Persistent memory (NVDIMM / Optane) onlined as a NUMA node.
    case persistentMemory = "pmem"
    /// A GPU's memory exposed as a NUMA node.
    case gpuMemory = "gpu-memory"

    /// Rank of this kind among tiers when only the kind is known (0 is fastest).
    public var nominalOrder: Int {
        switch self {
        case .hbm: 0
        case .dram: 1
        case .farMemory: 2
        case .persistentMemory: 3
        case .gpuMemory: 4
        }
    }

    /// Human name: `HBM`, `DRAM`, `CXL / far memory`, `persistent memory`, `GPU memory`.
    public var description: String {
        switch self {
        case .hbm: "HBM"
        case .dram: "DRAM"
        case .farMemory: "CXL / far memory"
        case .persistentMemory: "persistent memory"
        case .gpuMemory: "GPU memory"
        }
    }
}

/// Which performance figure a ``MemoryFigure`` is.
public enum FigureMetric: String, Sendable, Hashable, CaseIterable {
    /// Read latency in nanoseconds.
    case readLatency = "read-latency"
    /// Write latency in nanoseconds.
    case writeLatency = "write-latency"
    /// Access latency in nanoseconds when read and write are not told apart.
    case latency
    /// Read bandwidth in MiB/s.
    case readBandwidth = "read-bandwidth"
    /// Write bandwidth in MiB/s.
    case writeBandwidth = "write-bandwidth"
    /// Access bandwidth in MiB/s when read and write are not told apart.
    case bandwidth

    /// Whether smaller is better (latency) rather than larger (bandwidth).
    public var isLatency: Bool { self == .readLatency || self == .writeLatency || self == .latency }
    /// `ns` for latencies, `MiB/s` for bandwidths (the units of ACPI HMAT as Linux and hwloc report them).
    public var unit: String { isLatency ? "ns" : "MiB/s" }
}

/// Where a figure came from, so that a reader can check it.
public enum FigureSource: String, Sendable, Hashable {
    /// An hwloc memory attribute (hwloc read it from HMAT, or an XML file carried it).
    case hwlocMemoryAttribute = "hwloc-memattr"
    /// `/sys/devices/system/node/nodeN/access0/initiators/…` (any initiator, including generic ones).
    case sysfsAccess0 = "sysfs-access0"
    /// `/sys/devices/system/node/nodeN/access1/initiators/…` (CPU initiators only).
    case sysfsAccess1 = "sysfs-access1"

    /// Preference when several sources give the same metric: the kernel's
    /// CPU-only class first, because MemWall's initiators are CPUs.
    var preference: Int {
        switch self {
        case .sysfsAccess1: 0
        case .sysfsAccess0: 1
        case .hwlocMemoryAttribute: 2
        }
    }
}

/// Who performs the accesses a figure describes.
public struct Initiator: Sendable, Hashable, CustomStringConvertible {
    /// The CPUs of the initiator (empty for a generic initiator without CPUs).
    public var cpus: CPUSet
    /// The NUMA nodes the kernel names as initiators (sysfs), empty when hwloc gave a CPU set.
    public var nodes: [Int]
    /// `cpus 0-1` or `node 0 (cpus 0-1)`.
    public var description: String {
        if nodes.isEmpty { return "cpus \(cpus)" }
        let names = nodes.map { "node \($0)" }.joined(separator: ",")
        return cpus.isEmpty ? names : "\(names) (cpus \(cpus))"
    }
}

/// One latency or bandwidth value between an initiator and a memory node, with its origin.
public struct MemoryFigure: Sendable, Hashable {
    /// What is measured.
    public var metric: FigureMetric
    /// The value in ``FigureMetric/unit`` (ns or MiB/s); never zero (zeros are firmware gaps).
    public var value: UInt64
    /// Who accesses the memory.
    public var initiator: Initiator
    /// Which source reported it.
    public var source: FigureSource
    /// The exact file, or hwloc attribute name, the value was read from.
    public var evidence: String
}

/// A memory-side cache in front of a node (e.g. DDR caching Optane in 2LM mode).
public struct MemorySideCache: Sendable, Hashable {
    /// Cache capacity.
    public var size: ByteCount
    /// Cache level, 1 being closest to the memory.
    public var depth: Int
    /// Cache line size in bytes when known.
    public var lineSize: Int?
}

/// A DAX device whose memory is (or can be) onlined as a NUMA node.
public struct DAXLink: Sendable, Hashable {
    /// Device name, e.g. `dax0.0`.
    public var device: String
    /// The node its memory belongs to (`target_node`).
    public var targetNode: Int
    /// The driver bound to it: `kmem` (onlined as system RAM), `device_dax`, or `nil` when unknown.
    public var driver: String?
    /// Where the information was read.
    public var evidence: String
}

/// One NUMA node holding memory, with everything known about it and why it is classified as it is.
public struct MemoryNode: Sendable, Hashable {
    /// The node number the kernel uses (`nodeN`, hwloc `P#`).
    public var osIndex: Int
    /// hwloc's logical index (`L#`).
    public var logicalIndex: Int
    /// Total memory of the node, `nil` when the source does not say.
    public var capacity: ByteCount?
    /// Free memory (live machine only, from `nodeN/meminfo`).
    public var free: ByteCount?
    /// Whether CPUs belong to the node (`nodeN/cpulist`); `nil` when only hwloc XML was read,
    /// since hwloc attaches CPU-less nodes to their initiator's CPUs and does not record the difference.
    public var hasCPUs: Bool?
    /// The node's own CPUs according to sysfs (empty when CPU-less or unknown).
    public var cpus: CPUSet
    /// The CPUs hwloc considers local to the node (for a CPU-less node: its initiator's).
    public var locality: CPUSet
    /// The hwloc object the node is attached to, e.g. `Package L#0` or `Machine`.
    public var attachedTo: String
    /// hwloc's subtype (`DRAM`, `HBM`, `MCDRAM`, `NVM`, `SPM`, `CXL-DRAM`, `GPUMemory`), if any.
    public var hwlocSubtype: String?
    /// hwloc info pairs relevant to memory (`MemoryTier`, `DAXDevice`, `DAXType`, …).
    public var hwlocInfo: [String: String]
    /// Latency and bandwidth figures per initiator and source; zeros excluded.
    public var figures: [MemoryFigure]
    /// Firmware values that were present but zero, hence ignored (file or attribute names).
    public var ignoredZeroFigures: [String]
    /// The kernel's memory tier (`/sys/devices/virtual/memory_tiering/memory_tierN`), if exposed.
    public var kernelTier: Int?
    /// CXL objects tied to the node (from `/sys/bus/cxl`).
    public var cxl: [String]
    /// DAX devices whose memory is this node (from `/sys/bus/dax`).
    public var dax: [DAXLink]
    /// Memory-side caches in front of the node.
    public var memorySideCaches: [MemorySideCache]
    /// What the node is.
    public var kind: MemoryKind
    /// Tier rank, 0 fastest; equal ranks form one ``MemoryTier``.
    public var tierRank: Int
    /// Why ``kind`` and ``tierRank`` were chosen, one fact per line.
    public var evidence: [String]
}

/// Nodes of one kind, ranked among the machine's tiers.
public struct MemoryTier: Sendable, Hashable {
    /// 0 is the fastest tier.
    public var rank: Int
    /// What the tier is made of.
    public var kind: MemoryKind
    /// The nodes (OS indexes), ascending.
    public var nodes: [Int]
    /// Sum of the nodes' capacities, `nil` if any is unknown.
    public var capacity: ByteCount?
}

/// What kind of device a ``Device`` is.
public enum DeviceKind: String, Sendable, Hashable, CaseIterable {
    /// An RDMA device (InfiniBand HCA, RoCE NIC, soft-RoCE `rxe`).
    case rdma
    /// A network interface.
    case network
    /// A block device (NVMe namespace, SATA/virtio disk).
    case block
    /// A GPU (display, CUDA, OpenCL, NVML, ROCm handle).
    case gpu
    /// Another compute accelerator.
    case coprocessor
    /// A DMA engine.
    case dma
    /// A CXL memory device (`memN`).
    case cxlMemory = "cxl-memory"
    /// A DAX character device (`daxX.Y`).
    case dax
}

/// A device and the memory node it is nearest to.
public struct Device: Sendable, Hashable {
    /// The OS name: `nvme0n1`, `rxe0`, `eth0`, `card0`, `cuda0`.
    public var name: String
    /// What the device is.
    public var kind: DeviceKind
    /// hwloc's or the kernel's subtype (`Disk`, `CUDA`, `CXLMem`, …), if any.
    public var subtype: String?
    /// PCI address `dddd:bb:dd.f` when the device sits on PCI.
    public var pciAddress: String?
    /// The nodes local to the device (hwloc locality or sysfs `numa_node`), ascending.
    public var localNodes: [Int]
    /// The memory node DMA from this device should target, `nil` when the topology has no node.
    public var nearestNode: Int?
    /// Why ``nearestNode`` was chosen.
    public var evidence: String
}

/// A processor package (socket).
public struct Package: Sendable, Hashable {
    /// The package's OS index (`P#`), or its logical index when the OS gives none.
    public var index: Int
    /// Its CPUs (PU OS indexes).
    public var cpus: CPUSet
    /// Number of cores.
    public var cores: Int
    /// Number of hardware threads.
    public var processingUnits: Int
}

/// The SLIT (relative latency) matrix between NUMA nodes, as hwloc reports it.
public struct DistanceMatrix: Sendable, Hashable {
    /// Node OS indexes in matrix order.
    public var nodes: [Int]
    /// `values[i][j]` is the distance from `nodes[i]` to `nodes[j]` (10 = local).
    public var values: [[UInt64]]

    /// The distance from node `from` to node `to` (OS indexes), `nil` if either is not in the matrix.
    public func distance(from: Int, to: Int) -> UInt64? {
        guard let i = nodes.firstIndex(of: from), let j = nodes.firstIndex(of: to) else { return nil }
        return values[i][j]
    }
}

/// One machine's memory hierarchy: packages, memory nodes with their tiers, devices and distances.
///
/// Built by ``Topology/load(_:)``; a plain value with no C state, safe to share.
public struct Topology: Sendable, Hashable {
    /// Where it was read from.
    public var source: TopologySource
    /// The API version of the hwloc library used (`hwloc_get_api_version`), e.g. `2.8.0` for hwloc 2.9.
    public var hwlocAPIVersion: String
    /// Packages in logical order.
    public var packages: [Package]
    /// Number of cores in the machine.
    public var coreCount: Int
    /// Number of hardware threads (PUs) in the machine.
    public var processingUnitCount: Int
    /// Memory nodes, by OS index.
    public var nodes: [MemoryNode]
    /// Tiers, fastest first.
    public var tiers: [MemoryTier]
    /// Devices with their nearest node, sorted by kind then name.
    public var devices: [Device]
    /// SLIT distances, when the source has them.
    public var distances: DistanceMatrix?
    /// Facts about the input worth telling the reader (missing sysfs parts, ignored zeros).
    public var notes: [String]

    /// The node with OS index `osIndex`, if present.
    public func node(_ osIndex: Int) -> MemoryNode? { nodes.first { $0.osIndex == osIndex } }
    /// The device named `name` (`nvme0n1`, `rxe0`), if present.
    public func device(named name: String) -> Device? { devices.first { $0.name == name } }
}
