#if canImport(Glibc)
import Glibc
#endif
import MemWallCore

/// Reads a sysfs tree rooted at `/` or at an extracted snapshot, the way
/// hwloc's `HWLOC_FSROOT` does: every absolute path is taken relative to the root.
///
/// Plain POSIX calls rather than Foundation: sysfs files are tiny and many, and
/// `memwall topo` has to start and finish as fast as `lstopo`. Paths are opened
/// relative to a descriptor of the root (`openat`), so the kernel does not walk the
/// snapshot's own prefix again for each of the hundreds of files.
final class SysfsTree: Sendable {
    /// The root directory, without a trailing slash (`""` for the live `/`).
    let root: String
    /// Directory descriptor of the root, or -1 when it cannot be opened (then every read
    /// fails and ``isRootDirectory`` is false). Owned here, closed once in `deinit`.
    private let rootFD: Int32
    /// Why the root could not be opened (0 when it was).
    let rootOpenErrno: Int32

    init(root: String) {
        var r = root
        while r.hasSuffix("/") { r.removeLast() }
        self.root = r
        rootFD = open(r.isEmpty ? "/" : r, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        rootOpenErrno = rootFD < 0 ? errno : 0
    }

    deinit {
        if rootFD >= 0 { close(rootFD) }
    }

    /// Whether the root exists and is a directory.
    var isRootDirectory: Bool { rootFD >= 0 }

    /// Full path of `path` (which starts with `/`) inside the tree, for messages and evidence.
    func resolve(_ path: String) -> String { root + path }

    /// `path` without its leading `/`, for the `*at` calls.
    private func relative(_ path: String) -> String {
        var p = Substring(path)
        while p.first == "/" { p = p.dropFirst() }
        return p.isEmpty ? "." : String(p)
    }

    /// The file's contents with surrounding whitespace removed, `nil` if it cannot be read.
    func read(_ path: String) -> String? {
        let fd = openat(rootFD, relative(path), O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while bytes.count < 1 << 20 {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
            // sysfs hands over a whole attribute in one read and a short read of a regular
            // file means end of file, so a second read would only return 0.
            if n < chunk.count { break }
        }
        return String(decoding: bytes, as: UTF8.self).trimmingWhitespace()
    }

    /// The file parsed as a decimal integer.
    func readInt(_ path: String) -> Int? { read(path).flatMap { Int($0) } }

    /// The file parsed as a CPU/node list (`0-3,8`).
    func readList(_ path: String) -> CPUSet? {
        guard let text = read(path) else { return nil }
        return try? CPUSet.parse(text)
    }

    /// Names in a directory, sorted, without `.` and `..`; empty if it cannot be listed.
    func list(_ path: String) -> [String] {
        let fd = openat(rootFD, relative(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return [] }
        guard let dir = fdopendir(fd) else {
            close(fd)
            return []
        }
        // closedir closes fd as well.
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        // Split each name once, not once per comparison: node directories hold hundreds of entries.
        return names.map { (splitTrailingNumber($0), $0) }
            .sorted { a, b in a.0.0 != b.0.0 ? a.0.0 < b.0.0 : (a.0.1 ?? -1) < (b.0.1 ?? -1) }
            .map(\.1)
    }

    /// Whether the path exists (following symlinks).
    func exists(_ path: String) -> Bool { faccessat(rootFD, relative(path), F_OK, 0) == 0 }

    /// Whether the path is a directory (following symlinks).
    func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return fstatat(rootFD, relative(path), &st, 0) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// The last component of a symlink's target (`…/drivers/kmem` → `kmem`), if it is one.
    func linkBasename(_ path: String) -> String? {
        linkTarget(path)?.split(separator: "/").last.map(String.init)
    }

    /// The full target of a symlink, if it is one.
    func linkTarget(_ path: String) -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlinkat(rootFD, relative(path), &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// Orders `node2` before `node10` (numbers inside names compare as numbers).
func naturalOrder(_ a: String, _ b: String) -> Bool {
    let (pa, na) = splitTrailingNumber(a)
    let (pb, nb) = splitTrailingNumber(b)
    if pa != pb { return pa < pb }
    return (na ?? -1) < (nb ?? -1)
}

private func splitTrailingNumber(_ s: String) -> (String, Int?) {
    let bytes = s.utf8
    var start = bytes.endIndex
    while start > bytes.startIndex {
        let before = bytes.index(before: start)
        guard bytes[before] >= UInt8(ascii: "0") && bytes[before] <= UInt8(ascii: "9") else { break }
        start = before
    }
    guard start != bytes.endIndex, let n = Int(Substring(bytes[start...])) else { return (s, nil) }
    return (String(Substring(bytes[..<start])), n)
}

/// Facts sysfs gives about memory nodes and devices, read relative to a ``SysfsTree``.
struct SysfsFacts: Sendable {
    /// Per-node facts by OS index.
    struct Node: Sendable {
        var cpus: CPUSet?
        var totalBytes: Int?
        var freeBytes: Int?
        var figures: [MemoryFigure] = []
        var ignoredZeros: [String] = []
        var kernelTier: Int?
        var cxl: [String] = []
        var dax: [DAXLink] = []
    }
    /// A device found under `/sys/class`.
    struct ClassDevice: Sendable {
        var name: String
        var kind: DeviceKind
        var numaNode: Int?
        var pciAddress: String?
        var isVirtual: Bool
        var evidence: String
    }

    var nodes: [Int: Node] = [:]
    var devices: [ClassDevice] = []
    var notes: [String] = []

    static let nodeRoot = "/sys/devices/system/node"

    /// Reads everything; `live` adds free memory (a snapshot's free memory is stale).
    static func read(_ tree: SysfsTree, live: Bool) -> SysfsFacts {
        var facts = SysfsFacts()
        let nodeNames = tree.list(nodeRoot).filter { $0.hasPrefix("node") && Int($0.dropFirst(4)) != nil }
        // `has_cpu` is the kernel's own answer; without it (old kernels) each node's mask decides.
        let withCPUs = tree.readList("\(nodeRoot)/has_cpu")
        for name in nodeNames {
            guard let index = Int(name.dropFirst(4)) else { continue }
            let dir = "\(nodeRoot)/\(name)"
            var node = Node()
            if let withCPUs, !withCPUs.contains(index) {
                node.cpus = .empty
            } else {
                // Every kernel has cpumap; cpulist came later.
                node.cpus = tree.read("\(dir)/cpumap").flatMap(parseCPUMask) ?? tree.readList("\(dir)/cpulist")
            }
            // hwloc already reads a snapshot's capacities; free memory only means something live.
            if live, let meminfo = tree.read("\(dir)/meminfo") {
                node.totalBytes = meminfoValue(meminfo, "MemTotal:")
                node.freeBytes = meminfoValue(meminfo, "MemFree:")
            }
            facts.nodes[index] = node
        }
        // Figures need every node's CPUs first (an initiator is named by its node).
        for index in facts.nodes.keys {
            for access in [1, 0] {
                readAccessClass(tree, node: index, access: access, into: &facts)
            }
        }
        readMemoryTiers(tree, into: &facts)
        readDAX(tree, into: &facts)
        readCXL(tree, into: &facts)
        facts.devices = readClassDevices(tree)
        return facts
    }

    /// Parses a kernel CPU mask (`00000000,0000000f`: 32-bit hex words, most significant first).
    static func parseCPUMask(_ text: String) -> CPUSet? {
        // Walk the hex digits from the end: digit k (from the right, commas skipped) holds CPUs 4k..4k+3.
        var cpus: [Int] = []
        var digit = 0
        for byte in text.utf8.reversed() {
            let value: Int
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = Int(byte - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): value = Int(byte - UInt8(ascii: "a")) + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): value = Int(byte - UInt8(ascii: "A")) + 10
            case UInt8(ascii: ","): continue
            case UInt8(ascii: " "), UInt8(ascii: "\n"): continue
            default: return nil
            }
            for bit in 0..<4 where value & (1 << bit) != 0 { cpus.append(digit * 4 + bit) }
            digit += 1
        }
        return CPUSet(ascendingUnique: cpus)
    }

    private static func meminfoValue(_ text: String, _ key: String) -> Int? {
        // MemTotal and MemFree are the first lines of a node's meminfo; do not split the rest.
        for line in text.split(separator: "\n", maxSplits: 4) {
            let tokens = line.split(separator: " ", omittingEmptySubsequences: true)
            guard let at = tokens.firstIndex(where: { $0 == key }), at + 1 < tokens.count,
                  let kib = Int(tokens[at + 1]), kib >= 0 else { continue }
            // A snapshot is a file anyone can write: a count that overflows in bytes is no figure.
            let (bytes, overflow) = kib.multipliedReportingOverflow(by: 1024)
            return overflow ? nil : bytes
        }
        return nil
    }

    private static func readAccessClass(_ tree: SysfsTree, node: Int, access: Int, into facts: inout SysfsFacts) {
        let dir = "\(nodeRoot)/node\(node)/access\(access)/initiators"
        let entries = tree.list(dir)
        guard !entries.isEmpty else { return }
        let initiatorNodes = entries.compactMap { $0.hasPrefix("node") ? Int($0.dropFirst(4)) : nil }
        var cpus: [Int] = []
        for i in initiatorNodes { cpus.append(contentsOf: facts.nodes[i]?.cpus?.indexes ?? []) }
        let initiator = Initiator(cpus: CPUSet(cpus), nodes: initiatorNodes)
        let source: FigureSource = access == 1 ? .sysfsAccess1 : .sysfsAccess0
        let files: [(String, FigureMetric)] = [
            ("read_latency", .readLatency), ("write_latency", .writeLatency),
            ("read_bandwidth", .readBandwidth), ("write_bandwidth", .writeBandwidth),
        ]
        for (file, metric) in files {
            let path = "\(dir)/\(file)"
            guard let text = tree.read(path), let value = UInt64(text) else { continue }
            if value == 0 {
                facts.nodes[node]?.ignoredZeros.append(path)
            } else {
                facts.nodes[node]?.figures.append(MemoryFigure(
                    metric: metric, value: value, initiator: initiator, source: source, evidence: path))
            }
        }
    }

    private static func readMemoryTiers(_ tree: SysfsTree, into facts: inout SysfsFacts) {
        let root = "/sys/devices/virtual/memory_tiering"
        guard tree.isDirectory(root) else { return }
        for name in tree.list(root) where name.hasPrefix("memory_tier") {
            guard let tier = Int(name.dropFirst("memory_tier".count)),
                  let nodes = tree.readList("\(root)/\(name)/nodelist") else { continue }
            for n in nodes.indexes { facts.nodes[n]?.kernelTier = tier }
        }
    }

    private static func readDAX(_ tree: SysfsTree, into facts: inout SysfsFacts) {
        let root = "/sys/bus/dax/devices"
        for name in tree.list(root) {
            let dir = "\(root)/\(name)"
            guard let target = tree.readInt("\(dir)/target_node"), target >= 0 else { continue }
            let driver = tree.linkBasename("\(dir)/driver")
            let link = DAXLink(device: name, targetNode: target, driver: driver, evidence: "\(dir)/target_node")
            facts.nodes[target]?.dax.append(link)
        }
    }

    private static func readCXL(_ tree: SysfsTree, into facts: inout SysfsFacts) {
        let root = "/sys/bus/cxl/devices"
        for name in tree.list(root) {
            let dir = "\(root)/\(name)"
            if name.hasPrefix("region") {
                // A RAM region onlined through DAX names its node via the dax device.
                for dax in tree.list(dir) where dax.hasPrefix("dax_region") {
                    for dev in tree.list("\(dir)/\(dax)") where dev.hasPrefix("dax") {
                        if let target = tree.readInt("\(dir)/\(dax)/\(dev)/target_node"), target >= 0 {
                            facts.nodes[target]?.cxl.append("\(name) (\(dev))")
                        }
                    }
                }
            }
        }
    }

    private static func readClassDevices(_ tree: SysfsTree) -> [ClassDevice] {
        var result: [ClassDevice] = []
        let classes: [(String, DeviceKind)] = [
            ("infiniband", .rdma), ("net", .network), ("block", .block), ("drm", .gpu),
        ]
        for (cls, kind) in classes {
            let root = "/sys/class/\(cls)"
            for name in tree.list(root) {
                let dir = "\(root)/\(name)"
                switch kind {
                case .network where name == "lo": continue
                case .block:
                    if tree.exists("\(dir)/partition") { continue }
                    if name.hasPrefix("loop") || name.hasPrefix("ram") || name.hasPrefix("zram") { continue }
                case .gpu:
                    // card0 is the GPU; card0-HDMI-A-1 and renderD128 are views of it.
                    guard name.hasPrefix("card"), Int(name.dropFirst(4)) != nil else { continue }
                default: break
                }
                result.append(classDevice(tree, dir: dir, name: name, kind: kind))
            }
        }
        let cxlRoot = "/sys/bus/cxl/devices"
        for name in tree.list(cxlRoot) where name.hasPrefix("mem") && Int(name.dropFirst(3)) != nil {
            let dir = "\(cxlRoot)/\(name)"
            let node = tree.readInt("\(dir)/numa_node")
            result.append(ClassDevice(name: name, kind: .cxlMemory, numaNode: node, pciAddress: nil,
                                      isVirtual: false, evidence: "\(dir)/numa_node"))
        }
        return result
    }

    private static func classDevice(_ tree: SysfsTree, dir: String, name: String, kind: DeviceKind) -> ClassDevice {
        // A device with no `device` link is virtual (rxe over lo, bridges, dm-*): it has no
        // bus locality, its DMA is done by whichever CPU runs it.
        var deviceDir = "\(dir)/device"
        if !tree.exists(deviceDir) {
            // A software RDMA device (rxe, siw) names its network interface in `parent`.
            let parent = kind == .rdma ? tree.read("\(dir)/parent") : nil
            if let parent, !parent.isEmpty, tree.exists("/sys/class/net/\(parent)/device") {
                deviceDir = "/sys/class/net/\(parent)/device"
            } else {
                let over = parent.map { ", software device over netdev \($0) which has no device either" } ?? ""
                return ClassDevice(name: name, kind: kind, numaNode: nil, pciAddress: nil, isVirtual: true,
                                   evidence: "\(dir) has no device link (virtual device\(over))")
            }
        }
        // An NVMe namespace's `device` is the controller; its PCI function is one level up.
        var node = tree.readInt("\(deviceDir)/numa_node")
        var nodePath = "\(deviceDir)/numa_node"
        if node == nil, let upper = tree.readInt("\(deviceDir)/device/numa_node") {
            node = upper
            nodePath = "\(deviceDir)/device/numa_node"
        }
        var pci: String? = nil
        for candidate in ["\(deviceDir)", "\(deviceDir)/device"] {
            if let target = tree.linkBasename(candidate), isPCIAddress(target) { pci = target; break }
        }
        let evidence = node.map { "\(nodePath) = \($0)" } ?? "\(deviceDir) has no numa_node file"
        return ClassDevice(name: name, kind: kind, numaNode: node, pciAddress: pci, isVirtual: false, evidence: evidence)
    }

    private static func isPCIAddress(_ s: String) -> Bool {
        // dddd:bb:dd.f
        let parts = s.split(separator: ":")
        return parts.count == 3 && parts[0].count == 4 && parts[1].count == 2 && parts[2].contains(".")
    }
}
