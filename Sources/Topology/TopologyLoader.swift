#if canImport(Glibc)
import Glibc
#endif
import MemWallCore

extension Topology {
    /// Discovers a topology from `source`: hwloc for the tree, PCI locality and memory
    /// attributes; sysfs (live or snapshot) for CPU-less nodes, HMAT `access0`/`access1`,
    /// memory tiers, DAX and CXL links and device `numa_node`; then classifies every node.
    ///
    /// - Throws: ``MemWallError`` — `notFound` for a missing file or directory,
    ///   `malformedInput` for XML hwloc cannot parse or a directory that is not a sysfs tree,
    ///   `unsupported` for an hwloc XML version newer than the runtime hwloc reads,
    ///   `invalidArgument` for a bad synthetic description.
    public static func load(_ source: TopologySource) throws(MemWallError) -> Topology {
        let xml = try validate(source)
        // sysfs is read on a second thread while hwloc discovers the tree.
        let sysfsReader: SysfsReadThread? = switch source {
        case .live: SysfsReadThread(tree: SysfsTree(root: ""), live: true)
        case .fsroot(let path): SysfsReadThread(tree: SysfsTree(root: path), live: false)
        case .xml, .synthetic: nil
        }
        let hw = try HwlocReader.read(source, xml: xml)
        return assemble(source: source, hwloc: hw, sysfs: sysfsReader?.join())
    }

    // MARK: - Input checks hwloc does not make (or makes only on stderr)

    /// Checks the source; for XML, returns the file's bytes, which hwloc then
    /// imports from memory (what was checked is what hwloc reads).
    private static func validate(_ source: TopologySource) throws(MemWallError) -> [UInt8]? {
        switch source {
        case .live:
            return nil
        case .xml(let path):
            return try validateXML(path)
        case .fsroot(let path):
            let tree = SysfsTree(root: path)
            guard tree.isRootDirectory else {
                throw MemWallError(.notFound, "sysfs snapshot directory '\(path)' does not exist or is not a directory",
                                   function: "open", errno: Errno(rawValue: tree.rootOpenErrno))
            }
            guard tree.isDirectory("/sys/devices/system/node") || tree.isDirectory("/sys/devices/system/cpu") else {
                throw MemWallError(.malformedInput,
                                   "'\(path)' is not a sysfs snapshot: neither \(path)/sys/devices/system/node nor \(path)/sys/devices/system/cpu exists (pass the top directory of an extracted hwloc-gather-topology tarball)")
            }
            return nil
        case .synthetic(let text):
            guard !text.trimmingWhitespace().isEmpty else {
                throw .invalid("synthetic description", text, expected: "levels such as \"pack:2 numa:2 core:4 pu:1\"")
            }
            try checkSynthetic(text)
            return nil
        }
    }

    private static func validateXML(_ path: String) throws(MemWallError) -> [UInt8] {
        let bytes = try readXML(path)
        let text = String(decoding: bytes.prefix(4096), as: UTF8.self)
        guard let version = xmlTopologyVersion(text) else {
            throw MemWallError(.malformedInput,
                               "'\(path)' is not an hwloc XML topology: no <topology> element in its first 4 KiB")
        }
        let major = Int(version.split(separator: ".").first ?? "") ?? 0
        if major > HwlocReader.supportedXMLMajor {
            throw MemWallError(.unsupported,
                               "'\(path)' is hwloc XML version \(version), newer than this hwloc (API \(HwlocReader.version)) can import (versions up to \(HwlocReader.supportedXMLMajor).x); re-export it with hwloc \(HwlocReader.supportedXMLMajor).x (lstopo --of xml) or load it with a newer hwloc")
        }
        try checkXMLObjects(bytes, path: path)
        return bytes
    }

    /// The `version` attribute of the `<topology>` element; `"1.0"` when the element has none
    /// (hwloc 1.x files); `nil` when there is no `<topology` element at all.
    static func xmlTopologyVersion(_ text: String) -> String? {
        guard let start = text.firstRange(of: "<topology") else { return nil }
        let rest = text[start.upperBound...]
        guard let close = rest.firstIndex(of: ">") else { return "1.0" }
        let tag = rest[..<close]
        guard let attr = tag.firstRange(of: "version=\"") else { return "1.0" }
        let value = tag[attr.upperBound...].prefix { $0 != "\"" }
        return String(value)
    }

    // MARK: - Merging hwloc and sysfs

    static func assemble(source: TopologySource, hwloc hw: HwlocFacts, sysfs: SysfsFacts?) -> Topology {
        var notes: [String] = []
        var nodes: [MemoryNode] = hw.nodes.map { h in
            let s = sysfs?.nodes[h.osIndex]
            var hasCPUs: Bool? = nil
            if let cpus = s?.cpus { hasCPUs = !cpus.isEmpty }
            return MemoryNode(
                osIndex: h.osIndex, logicalIndex: h.logicalIndex,
                capacity: (h.capacity ?? s?.totalBytes).map { ByteCount($0) },
                free: s?.freeBytes.map { ByteCount($0) },
                hasCPUs: hasCPUs, cpus: s?.cpus ?? .empty, locality: h.locality, attachedTo: h.attachedTo,
                hwlocSubtype: h.subtype, hwlocInfo: h.info,
                figures: (s?.figures ?? []) + h.figures,
                ignoredZeroFigures: (s?.ignoredZeros ?? []) + h.ignoredZeros,
                kernelTier: s?.kernelTier, cxl: s?.cxl ?? [], dax: s?.dax ?? [],
                memorySideCaches: h.memorySideCaches,
                kind: .dram, tierRank: 0, evidence: [])
        }
        MemoryClassifier.classify(&nodes)
        let tiers = MemoryClassifier.tiers(nodes)

        let zeroCount = nodes.reduce(0) { $0 + $1.ignoredZeroFigures.count }
        if zeroCount > 0 {
            notes.append("\(zeroCount) firmware latency/bandwidth values were 0 (no data) and are left out of the ranking")
        }
        if case .xml = source {
            notes.append("hwloc XML does not record which nodes have CPUs; CPU-less nodes are recognised only by subtype or figures")
        }
        if hw.version.hasPrefix("2.") && (Int(hw.version.split(separator: ".")[1]) ?? 0) < 10 {
            notes.append("hwloc API \(hw.version) has no CXL-DRAM subtype or memory tiers (added in 2.10); far memory is inferred from CPU-less nodes and figures")
        }
        if let sysfs { notes.append(contentsOf: sysfs.notes) }

        return Topology(
            source: source, hwlocAPIVersion: hw.version, packages: hw.packages,
            coreCount: hw.coreCount, processingUnitCount: hw.processingUnitCount,
            nodes: nodes, tiers: tiers,
            devices: mergeDevices(hwloc: hw.devices, sysfs: sysfs?.devices ?? [], nodes: nodes),
            distances: hw.distances, notes: notes)
    }

    private static func mergeDevices(hwloc: [HwlocFacts.OSDevice], sysfs: [SysfsFacts.ClassDevice],
                                     nodes: [MemoryNode]) -> [Device] {
        var byName: [String: Device] = [:]
        for d in hwloc {
            let (nearest, why) = nearest(among: d.localNodes, nodes: nodes)
            byName[d.name] = Device(
                name: d.name, kind: d.kind, subtype: d.subtype, pciAddress: d.pciAddress,
                localNodes: d.localNodes, nearestNode: nearest,
                evidence: "hwloc attaches it under \(d.attachedTo) (local nodes \(list(d.localNodes))); \(why)")
        }
        for s in sysfs {
            let existing = byName[s.name]
            var local: [Int]
            var evidence: String
            if let n = s.numaNode, n >= 0, nodes.contains(where: { $0.osIndex == n }) {
                local = [n]
                evidence = s.evidence
            } else if let existing, !existing.localNodes.isEmpty {
                // Firmware gave no numa_node but hwloc placed the device by its PCI bridge.
                local = existing.localNodes
                evidence = existing.evidence
                byName[s.name] = existing
                continue
            } else {
                local = []
                evidence = s.isVirtual ? s.evidence : "\(s.evidence) (firmware gave no locality)"
            }
            let (nearest, why) = nearest(among: local, nodes: nodes)
            byName[s.name] = Device(
                name: s.name, kind: existing?.kind ?? s.kind, subtype: existing?.subtype,
                pciAddress: existing?.pciAddress ?? s.pciAddress, localNodes: local, nearestNode: nearest,
                evidence: "\(evidence); \(why)")
        }
        return byName.values.sorted {
            let a = DeviceKind.allCases.firstIndex(of: $0.kind) ?? 0
            let b = DeviceKind.allCases.firstIndex(of: $1.kind) ?? 0
            return a != b ? a < b : naturalOrder($0.name, $1.name)
        }
    }

    /// The node DMA should target among `local` (all nodes when empty): the fastest
    /// tier that has CPUs, because a device's buffers live in ordinary DRAM.
    static func nearest(among local: [Int], nodes: [MemoryNode]) -> (Int?, String) {
        let candidates = local.isEmpty ? nodes : nodes.filter { local.contains($0.osIndex) }
        guard !candidates.isEmpty else { return (nil, "no memory node in the topology") }
        let best = candidates.min { a, b in
            let ka = (a.kind == .dram ? 0 : 1, a.hasCPUs == false ? 1 : 0, a.tierRank, a.osIndex)
            let kb = (b.kind == .dram ? 0 : 1, b.hasCPUs == false ? 1 : 0, b.tierRank, b.osIndex)
            return ka < kb
        }
        guard let best else { return (nil, "no memory node in the topology") }
        let scope = local.isEmpty ? "no locality, so any node; " : ""
        return (best.osIndex, "\(scope)nearest is node \(best.osIndex) (\(best.kind)\(best.hasCPUs == true ? " with CPUs" : ""))")
    }

    private static func list(_ values: [Int]) -> String {
        values.isEmpty ? "none" : CPUSet(values).description
    }
}
