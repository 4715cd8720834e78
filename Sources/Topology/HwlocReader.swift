#if canImport(Glibc)
import Glibc
#endif
internal import CHwloc
import MemWallCore
import Synchronization

/// What hwloc alone says about a topology, copied out of the C tree into Swift
/// values so that no hwloc pointer outlives ``HwlocReader/read(_:)``.
struct HwlocFacts: Sendable {
    struct Node: Sendable {
        var osIndex: Int
        var logicalIndex: Int
        var capacity: Int?
        var locality: CPUSet
        var attachedTo: String
        var subtype: String?
        var info: [String: String]
        var figures: [MemoryFigure]
        var ignoredZeros: [String]
        var memorySideCaches: [MemorySideCache]
    }
    struct OSDevice: Sendable {
        var name: String
        var kind: DeviceKind
        var subtype: String?
        var pciAddress: String?
        var localNodes: [Int]
        var attachedTo: String
    }
    var version: String
    var packages: [Package] = []
    var coreCount = 0
    var processingUnitCount = 0
    var nodes: [Node] = []
    var devices: [OSDevice] = []
    var distances: DistanceMatrix?
}

/// Serialises every hwloc load: `--fsroot` works through the process-wide
/// `HWLOC_FSROOT` variable, which a concurrent live load must not see.
private let hwlocLoadLock = Mutex(())

/// Owns one `hwloc_topology_t` from init to destroy; destroyed exactly once by `deinit`.
private struct HwlocHandle: ~Copyable {
    let raw: hwloc_topology_t

    init() throws(MemWallError) {
        var topology: hwloc_topology_t? = nil
        try CCall.minusOne(hwloc_topology_init(&topology), "hwloc_topology_init",
                           "cannot create an hwloc topology")
        guard let topology else {
            throw .system("hwloc_topology_init", .noMemory, "hwloc_topology_init returned no topology")
        }
        raw = topology
    }

    deinit { hwloc_topology_destroy(raw) }
}

/// Loads a topology through hwloc and copies out the facts MemWall uses.
enum HwlocReader {
    /// The runtime hwloc API version, e.g. `2.8.0` (hwloc 2.9 keeps the 2.8 API).
    static var version: String {
        let v = hwloc_get_api_version()
        return "\(v >> 16).\((v >> 8) & 0xff).\(v & 0xff)"
    }

    /// Highest XML major version the runtime hwloc imports (2 for every hwloc 2.x).
    static var supportedXMLMajor: Int { Int(hwloc_get_api_version() >> 16) }

    /// Loads `source` through hwloc and copies out the facts.
    /// - Parameter xml: For `.xml`, the file's bytes already read and checked
    ///   (hwloc imports them from memory); nil to let hwloc read the path.
    /// - Throws: `malformedInput` for XML hwloc refuses, or numbers MemWall cannot
    ///   hold (a memory size over 2^63, two NUMA nodes with one OS index).
    static func read(_ source: TopologySource, xml: [UInt8]? = nil) throws(MemWallError) -> HwlocFacts {
        try hwlocLoadLock.withLock { _ throws(MemWallError) in
            var environment = ScopedEnvironment()
            defer { environment.restore() }
            // Plugins are loaded at init: skip those whose output MemWall does not use
            // (GL display names, OpenCL handles that duplicate the PCI GPU, libxml2 when
            // hwloc's own parser reads the XML); dlopen-ing libOpenCL alone costs milliseconds.
            // Without the libpciaccess plugin hwloc's Linux backend builds the same PCI tree
            // (bus IDs, bridges, locality, OS devices) from sysfs; what is lost is only the
            // PCIVendor/PCIDevice name strings looked up in pci.ids, which MemWall does not
            // show, and that lookup made each live load about 6 ms slower.
            environment.set("HWLOC_PLUGINS_BLACKLIST", "hwloc_gl,hwloc_opencl,hwloc_xml_libxml,hwloc_pci")
            let handle = try HwlocHandle()
            // Devices as lstopo shows them. CPU caches are not part of MemWall's model and
            // reading them is most of hwloc's sysfs traffic (several files per cache per
            // CPU), so they are not discovered; memory-side caches are.
            hwloc_topology_set_io_types_filter(handle.raw, HWLOC_TYPE_FILTER_KEEP_IMPORTANT)
            hwloc_topology_set_cache_types_filter(handle.raw, HWLOC_TYPE_FILTER_KEEP_NONE)
            // CPU kinds (frequency, capacity: three files per CPU) are not used; and moving
            // the process onto every CPU in turn to run CPUID (x86 backend) stalls on a busy
            // machine while Linux sysfs already gives packages, cores and PUs.
            let flags = HWLOC_TOPOLOGY_FLAG_NO_CPUKINDS.rawValue | HWLOC_TOPOLOGY_FLAG_DONT_CHANGE_BINDING.rawValue
            try CCall.minusOne(hwloc_topology_set_flags(handle.raw, UInt(flags)), "hwloc_topology_set_flags",
                               "hwloc refused discovery flags NO_CPUKINDS | DONT_CHANGE_BINDING")
            hwloc_topology_set_type_filter(handle.raw, HWLOC_OBJ_MEMCACHE, HWLOC_TYPE_FILTER_KEEP_ALL)
            switch source {
            case .live:
                break
            case .xml(let path):
                // libxml2 prints parse errors straight to stderr (its plugin is not loaded,
                // see above); hwloc's own parser stays quiet unless HWLOC_XML_VERBOSE is set.
                environment.set("HWLOC_LIBXML_IMPORT", "0")
                let accepted: Bool
                if let xml {
                    // hwloc's reader wants a NUL-terminated buffer whose size counts the NUL.
                    let terminated = xml + [0]
                    accepted = terminated.withUnsafeBufferPointer { b in
                        b.withMemoryRebound(to: CChar.self) { hwloc_topology_set_xmlbuffer(handle.raw, $0.baseAddress, Int32(b.count)) }
                    } != -1
                } else {
                    accepted = hwloc_topology_set_xml(handle.raw, path) != -1
                }
                if !accepted {
                    throw MemWallError(.malformedInput,
                                       "'\(path)' is not an hwloc XML topology hwloc can read",
                                       function: "hwloc_topology_set_xml", errno: .current)
                }
            case .fsroot(let path):
                environment.set("HWLOC_FSROOT", path)
                // The x86 component would run CPUID on *this* machine's CPUs, pinning the
                // process to each in turn, and mix the host's caches into the snapshot
                // (lstopo -i DIR does not run it either).
                _ = hwloc_topology_set_components(handle.raw, UInt(HWLOC_TOPOLOGY_COMPONENTS_FLAG_BLACKLIST.rawValue), "x86")
            case .synthetic(let text):
                if hwloc_topology_set_synthetic(handle.raw, text) == -1 {
                    throw MemWallError(.invalidArgument,
                                       "invalid synthetic description '\(text)': expected levels such as \"pack:2 numa:2 core:4 pu:1\" (see hwloc's synthetic syntax)",
                                       function: "hwloc_topology_set_synthetic", errno: .current)
                }
            }
            if case .xml(let path) = source { try loadsWithoutCrashing(handle.raw, path: path) }
            if hwloc_topology_load(handle.raw) == -1 {
                let err = Errno.current
                throw MemWallError(source.kind == "xml" ? .malformedInput : .systemCall,
                                   "hwloc could not load the topology from \(source)",
                                   function: "hwloc_topology_load", errno: err)
            }
            return try extract(handle.raw)
        }
    }

    /// Runs hwloc's import of a file once in a child process first. hwloc 2.9's XML
    /// importer dereferences NULL on some malformed files (fuzzing found two kinds;
    /// `lstopo -i` crashes on them too), and a file must never end this process. The
    /// import is deterministic, so a child that finishes (loaded or refused) means
    /// the real load here finishes the same way.
    /// - Throws: `malformedInput` naming the file and the signal when the child died.
    /// How long the checking child may spend in hwloc's import (a 64 MiB file,
    /// the largest the pre-scan lets through, imports in about a second here).
    static let importSeconds = 60

    private static func loadsWithoutCrashing(_ topology: hwloc_topology_t, path: String) throws(MemWallError) {
        guard let fork = forkFunction else { return }
        let child = fork()
        if child == 0 {
            // The child only calls C: a copy of the configured topology is loaded and dropped.
            // Quietly: hwloc's complaints come once, from the parent's load; a crash is
            // reported by the parent, not by a backtrace or a core file here.
            let null = open("/dev/null", O_WRONLY)
            if null >= 0 { _ = dup2(null, 2) }
            var noCore = rlimit(rlim_cur: 0, rlim_max: 0)
            _ = setrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &noCore)
            for s in [SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGALRM] { _ = signal(s, SIG_DFL) }
            // The wait below has no end of its own: an import that does not finish
            // (an importer loop the pre-scan's size bounds did not foresee) ends here.
            _ = alarm(UInt32(importSeconds))
            _exit(hwloc_topology_load(topology) == 0 ? 0 : 2)
        }
        guard child > 0 else {
            throw .system("fork", .current, "cannot start the process that checks '\(path)' before hwloc imports it")
        }
        var status: Int32 = 0
        while waitpid(child, &status, 0) < 0 {
            guard Errno.current == .interrupted else {
                throw .system("waitpid", .current, "lost the process that checks '\(path)'")
            }
        }
        let signal = status & 0x7F
        let exitCode = (status >> 8) & 0xFF
        if signal == SIGALRM {
            throw MemWallError(.malformedInput,
                "hwloc did not finish importing '\(path)' within \(importSeconds) s; it is not a topology MemWall reads")
        }
        guard signal == 0, exitCode == 0 || exitCode == 2 else {
            let how = signal != 0 ? "signal \(signal)" : "exit status \(exitCode)"
            throw MemWallError(.malformedInput,
                "hwloc crashed (\(how)) importing '\(path)': it is not a valid hwloc XML topology (re-export it with lstopo --of xml)")
        }
    }

    /// `fork(2)`, which Swift's Glibc module marks unavailable (a Swift child of a
    /// threaded process must not run Swift code); ``loadsWithoutCrashing`` calls only C in the child.
    private static let forkFunction: (@convention(c) () -> pid_t)? = {
        dlsym(UnsafeMutableRawPointer(bitPattern: 0), "fork").map { unsafeBitCast($0, to: (@convention(c) () -> pid_t).self) }
    }()

    // MARK: - Copying out of the C tree

    private static func extract(_ topology: hwloc_topology_t) throws(MemWallError) -> HwlocFacts {
        var facts = HwlocFacts(version: version)
        // hwloc accepts an XML file that puts one of these types at two depths; its
        // per-type counts are then -1 and its per-type walks empty (found by fuzzing).
        for (type, name) in [(HWLOC_OBJ_PACKAGE, "packages"), (HWLOC_OBJ_CORE, "cores"), (HWLOC_OBJ_PU, "processing units")]
        where hwloc_get_nbobjs_by_type(topology, type) < 0 {
            throw MemWallError(.malformedInput, "the topology puts \(name) at more than one depth of the tree; each must form one level")
        }
        facts.coreCount = Int(hwloc_get_nbobjs_by_type(topology, HWLOC_OBJ_CORE))
        facts.processingUnitCount = Int(hwloc_get_nbobjs_by_type(topology, HWLOC_OBJ_PU))

        let coresPerPackage = countPerPackage(topology, HWLOC_OBJ_CORE)
        let unitsPerPackage = countPerPackage(topology, HWLOC_OBJ_PU)
        var package = hwloc_get_next_obj_by_type(topology, HWLOC_OBJ_PACKAGE, nil)
        while let p = package {
            let logical = Int(p.pointee.logical_index)
            let osIndex = p.pointee.os_index == UInt32.max ? logical : Int(p.pointee.os_index)
            facts.packages.append(Package(
                index: osIndex, cpus: cpuSet(p.pointee.cpuset),
                cores: logical < coresPerPackage.count ? coresPerPackage[logical] : 0,
                processingUnits: logical < unitsPerPackage.count ? unitsPerPackage[logical] : 0))
            package = hwloc_get_next_obj_by_type(topology, HWLOC_OBJ_PACKAGE, p)
        }

        var numa = hwloc_get_next_obj_by_type(topology, HWLOC_OBJ_NUMANODE, nil)
        while let n = numa {
            facts.nodes.append(try node(topology, n))
            numa = hwloc_get_next_obj_by_type(topology, HWLOC_OBJ_NUMANODE, n)
        }
        facts.nodes.sort { $0.osIndex < $1.osIndex }
        // Everything downstream keys nodes by OS index: two with one index would be merged.
        for (a, b) in zip(facts.nodes, facts.nodes.dropFirst()) where a.osIndex == b.osIndex {
            throw MemWallError(.malformedInput, "two NUMA nodes have OS index \(a.osIndex); each node needs its own index")
        }

        var osdev = hwloc_get_next_obj_by_type(topology, HWLOC_OBJ_OS_DEVICE, nil)
        while let d = osdev {
            if let device = osDevice(topology, d) { facts.devices.append(device) }
            osdev = hwloc_get_next_obj_by_type(topology, HWLOC_OBJ_OS_DEVICE, d)
        }
        facts.distances = distances(topology)
        return facts
    }

    /// How many objects of `type` (cores, PUs) with a non-empty cpuset lie under each package,
    /// indexed by the package's logical index: one pass over the level, where asking hwloc per
    /// package (`hwloc_get_nbobjs_inside_cpuset_by_type`) walks the whole level once for every
    /// package (128 packages × 512 cores and PUs on the 64-node snapshot). In hwloc's tree an
    /// object's cpuset lies inside a package's exactly when the package is its ancestor.
    private static func countPerPackage(_ topology: hwloc_topology_t, _ type: hwloc_obj_type_t) -> [Int] {
        var counts = [Int](repeating: 0, count: max(0, Int(hwloc_get_nbobjs_by_type(topology, HWLOC_OBJ_PACKAGE))))
        var object = hwloc_get_next_obj_by_type(topology, type, nil)
        while let o = object {
            if let cpuset = o.pointee.cpuset, hwloc_bitmap_iszero(cpuset) == 0,
               let package = hwloc_get_ancestor_obj_by_type(topology, HWLOC_OBJ_PACKAGE, o) {
                let i = Int(package.pointee.logical_index)
                if i < counts.count { counts[i] += 1 }
            }
            object = hwloc_get_next_obj_by_type(topology, type, o)
        }
        return counts
    }

    private static func node(_ topology: hwloc_topology_t, _ obj: hwloc_obj_t) throws(MemWallError) -> HwlocFacts.Node {
        // hwloc keeps sizes as UInt64 (an XML "-5" arrives as 2^64 - 5): refuse what is no byte count.
        func bytes(_ value: UInt64, _ what: String) throws(MemWallError) -> Int {
            guard let v = Int(exactly: value) else {
                throw MemWallError(.malformedInput,
                    "NUMA node P#\(obj.pointee.os_index) has \(what) \(value) bytes; expected a byte count from 0 to \(Int.max)")
            }
            return v
        }
        // An XML node without os_index gets hwloc's "unknown" index (2^32-1); MemWall keys
        // nodes by OS index, so such a node would show as P#4294967295 (found by fuzzing).
        guard Int(obj.pointee.os_index) < Topology.maximumObjectIndex else {
            throw MemWallError(.malformedInput,
                "NUMA node L#\(obj.pointee.logical_index) has OS index \(obj.pointee.os_index) (none given, or out of range); each node needs an os_index below \(Topology.maximumObjectIndex)")
        }
        var caches: [MemorySideCache] = []
        var parent = obj.pointee.parent
        while let p = parent, p.pointee.type == HWLOC_OBJ_MEMCACHE {
            if let attr = p.pointee.attr {
                let cache = attr.pointee.cache
                caches.append(MemorySideCache(size: ByteCount(try bytes(cache.size, "a memory-side cache of")), depth: Int(cache.depth),
                                              lineSize: cache.linesize == 0 ? nil : Int(cache.linesize)))
            }
            parent = p.pointee.parent
        }
        let memory = try obj.pointee.attr.map { a throws(MemWallError) in try bytes(a.pointee.numanode.local_memory, "local memory of") } ?? 0
        var figures: [MemoryFigure] = []
        var zeros: [String] = []
        let attributes: [(hwloc_memattr_id_e, FigureMetric, String)] = [
            (HWLOC_MEMATTR_ID_READ_LATENCY, .readLatency, "ReadLatency"),
            (HWLOC_MEMATTR_ID_WRITE_LATENCY, .writeLatency, "WriteLatency"),
            (HWLOC_MEMATTR_ID_LATENCY, .latency, "Latency"),
            (HWLOC_MEMATTR_ID_READ_BANDWIDTH, .readBandwidth, "ReadBandwidth"),
            (HWLOC_MEMATTR_ID_WRITE_BANDWIDTH, .writeBandwidth, "WriteBandwidth"),
            (HWLOC_MEMATTR_ID_BANDWIDTH, .bandwidth, "Bandwidth"),
        ]
        for (id, metric, name) in attributes {
            for (initiator, value) in memoryAttribute(topology, id.rawValue, obj) {
                let evidence = "hwloc memattr \(name) of NUMANode P#\(obj.pointee.os_index) from \(initiator)"
                if value == 0 { zeros.append(evidence); continue }
                figures.append(MemoryFigure(metric: metric, value: value, initiator: initiator,
                                            source: .hwlocMemoryAttribute, evidence: evidence))
            }
        }
        return HwlocFacts.Node(
            osIndex: Int(obj.pointee.os_index), logicalIndex: Int(obj.pointee.logical_index),
            capacity: memory > 0 ? memory : nil, locality: cpuSet(obj.pointee.cpuset),
            attachedTo: parent.map(objectName) ?? "Machine",
            subtype: obj.pointee.subtype.map { String(cString: $0) },
            info: infos(obj), figures: figures, ignoredZeros: zeros, memorySideCaches: caches)
    }

    private static func memoryAttribute(_ topology: hwloc_topology_t, _ id: hwloc_memattr_id_t,
                                        _ target: hwloc_obj_t) -> [(Initiator, UInt64)] {
        var count: UInt32 = 0
        guard hwloc_memattr_get_initiators(topology, id, target, 0, &count, nil, nil) == 0, count > 0 else {
            return []
        }
        var locations = [hwloc_location](repeating: hwloc_location(), count: Int(count))
        var values = [UInt64](repeating: 0, count: Int(count))
        var filled = count
        guard hwloc_memattr_get_initiators(topology, id, target, 0, &filled, &locations, &values) == 0 else {
            return []
        }
        var result: [(Initiator, UInt64)] = []
        for i in 0..<Int(min(filled, count)) {
            let location = locations[i]
            let cpus: CPUSet
            if location.type == HWLOC_LOCATION_TYPE_CPUSET {
                cpus = cpuSet(location.location.cpuset)
            } else if let object = location.location.object {
                cpus = cpuSet(object.pointee.cpuset)
            } else {
                continue
            }
            result.append((Initiator(cpus: cpus, nodes: []), values[i]))
        }
        return result
    }

    private static func osDevice(_ topology: hwloc_topology_t, _ obj: hwloc_obj_t) -> HwlocFacts.OSDevice? {
        guard let cname = obj.pointee.name, let attr = obj.pointee.attr else { return nil }
        let name = String(cString: cname)
        let subtype = obj.pointee.subtype.map { String(cString: $0) }
        let kind: DeviceKind
        switch attr.pointee.osdev.type {
        case HWLOC_OBJ_OSDEV_BLOCK:
            if subtype == "CXLMem" { kind = .cxlMemory }
            else if name.hasPrefix("dax") { kind = .dax }
            else { kind = .block }
        case HWLOC_OBJ_OSDEV_GPU: kind = .gpu
        case HWLOC_OBJ_OSDEV_NETWORK: kind = .network
        case HWLOC_OBJ_OSDEV_OPENFABRICS: kind = .rdma
        case HWLOC_OBJ_OSDEV_DMA: kind = .dma
        case HWLOC_OBJ_OSDEV_COPROC:
            kind = ["CUDA", "OpenCL", "RSMI", "LevelZero"].contains(subtype ?? "") ? .gpu : .coprocessor
        default: return nil
        }
        var pci: String? = nil
        var parent = obj.pointee.parent
        while let p = parent {
            if p.pointee.type == HWLOC_OBJ_PCI_DEVICE, let a = p.pointee.attr {
                let d = a.pointee.pcidev
                pci = hex(Int(d.domain), 4) + ":" + hex(Int(d.bus), 2) + ":" + hex(Int(d.dev), 2) + "." + String(d.func, radix: 16)
                break
            }
            if p.pointee.type != HWLOC_OBJ_BRIDGE && p.pointee.type != HWLOC_OBJ_OS_DEVICE { break }
            parent = p.pointee.parent
        }
        var local: [Int] = []
        var attached = "Machine"
        if let ancestor = hwloc_get_non_io_ancestor_obj(topology, obj) {
            local = bitmapIndexes(ancestor.pointee.nodeset)
            attached = objectName(ancestor)
        }
        return HwlocFacts.OSDevice(name: name, kind: kind, subtype: subtype, pciAddress: pci,
                                   localNodes: local, attachedTo: attached)
    }

    private static func distances(_ topology: hwloc_topology_t) -> DistanceMatrix? {
        var count: UInt32 = 0
        let kind = UInt(HWLOC_DISTANCES_KIND_MEANS_LATENCY.rawValue)
        guard hwloc_distances_get_by_type(topology, HWLOC_OBJ_NUMANODE, &count, nil, kind, 0) == 0, count > 0 else {
            return nil
        }
        var matrices = [UnsafeMutablePointer<hwloc_distances_s>?](repeating: nil, count: Int(count))
        var filled = count
        guard hwloc_distances_get_by_type(topology, HWLOC_OBJ_NUMANODE, &filled, &matrices, kind, 0) == 0 else {
            return nil
        }
        defer { for m in matrices.prefix(Int(min(filled, count))) { if let m { hwloc_distances_release(topology, m) } } }
        // Prefer the operating system's matrix (ACPI SLIT) over one a user added.
        let usable = matrices.prefix(Int(min(filled, count))).compactMap { $0 }
        let fromOS = UInt(HWLOC_DISTANCES_KIND_FROM_OS.rawValue)
        guard let chosen = usable.first(where: { $0.pointee.kind & fromOS != 0 }) ?? usable.first,
              let objs = chosen.pointee.objs, let values = chosen.pointee.values else { return nil }
        let n = Int(chosen.pointee.nbobjs)
        var nodes: [Int] = []
        for i in 0..<n {
            guard let o = objs[i] else { return nil }
            nodes.append(Int(o.pointee.os_index))
        }
        var rows: [[UInt64]] = []
        for i in 0..<n { rows.append((0..<n).map { values[i * n + $0] }) }
        return DistanceMatrix(nodes: nodes, values: rows)
    }

    // MARK: - Small conversions

    private static func cpuSet(_ bitmap: hwloc_const_bitmap_t?) -> CPUSet {
        CPUSet(ascendingUnique: bitmapIndexes(bitmap))
    }

    private static func bitmapIndexes(_ bitmap: hwloc_const_bitmap_t?) -> [Int] {
        guard let bitmap, hwloc_bitmap_weight(bitmap) > 0 else { return [] }
        var result: [Int] = []
        var index = hwloc_bitmap_first(bitmap)
        while index >= 0 {
            result.append(Int(index))
            index = hwloc_bitmap_next(bitmap, index)
        }
        return result
    }

    private static func objectName(_ obj: hwloc_obj_t) -> String {
        var buffer = [CChar](repeating: 0, count: 64)
        _ = hwloc_obj_type_snprintf(&buffer, buffer.count, obj, 0)
        let type = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        if obj.pointee.type == HWLOC_OBJ_MACHINE { return type }
        return "\(type) L#\(obj.pointee.logical_index)"
    }

    private static func infos(_ obj: hwloc_obj_t) -> [String: String] {
        var result: [String: String] = [:]
        guard let infos = obj.pointee.infos else { return result }
        for i in 0..<Int(obj.pointee.infos_count) {
            guard let n = infos[i].name, let v = infos[i].value else { continue }
            result[String(cString: n)] = String(cString: v)
        }
        return result
    }

    private static func hex(_ value: Int, _ width: Int) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: max(0, width - digits.count)) + digits
    }
}

/// Sets environment variables for the duration of one hwloc load and puts the
/// previous values back, so the process environment is left as it was found.
private struct ScopedEnvironment {
    private var saved: [(String, String?)] = []

    mutating func set(_ name: String, _ value: String) {
        saved.append((name, getenv(name).map { String(cString: $0) }))
        setenv(name, value, 1)
    }

    mutating func restore() {
        for (name, old) in saved.reversed() {
            if let old { setenv(name, old, 1) } else { unsetenv(name) }
        }
        saved.removeAll()
    }
}
