import MemWallCore

/// Decides each node's ``MemoryKind`` and tier rank from the evidence, and writes
/// the evidence down. Order of trust: hwloc's subtype (firmware/driver said so),
/// then whether the node has CPUs, then HMAT figures compared with DRAM, then the
/// kernel's memory tier and CXL/DAX links. Nothing is guessed from a missing figure.
enum MemoryClassifier {
    /// Latency this much above DRAM's, or bandwidth this much below, marks far memory.
    static let farLatencyRatio = 1.2
    static let farBandwidthRatio = 0.8
    /// Bandwidth this much above DRAM's (without worse latency) marks HBM.
    static let hbmBandwidthRatio = 1.5

    static func classify(_ nodes: inout [MemoryNode]) {
        let baseline = dramBaseline(nodes)
        for i in nodes.indices {
            let (kind, evidence) = decide(nodes[i], baseline: baseline, all: nodes)
            nodes[i].kind = kind
            nodes[i].evidence = evidence
        }
        let ranks = rankByKind(nodes)
        for i in nodes.indices {
            nodes[i].tierRank = ranks[nodes[i].kind] ?? 0
            let rank = nodes[i].tierRank
            nodes[i].evidence.append("tier \(rank): \(nodes[i].kind) ranks \(ordinal(rank + 1)) of \(ranks.count) kind\(ranks.count == 1 ? "" : "s") present")
        }
    }

    static func tiers(_ nodes: [MemoryNode]) -> [MemoryTier] {
        let ranks = rankByKind(nodes)
        return ranks.sorted { $0.value < $1.value }.map { kind, rank in
            let members = nodes.filter { $0.kind == kind }.sorted { $0.osIndex < $1.osIndex }
            let capacities = members.map(\.capacity)
            let total: ByteCount? = capacities.contains(where: { $0 == nil })
                ? nil : ByteCount(capacities.reduce(0) { $0 + ($1?.rawValue ?? 0) })
            return MemoryTier(rank: rank, kind: kind, nodes: members.map(\.osIndex), capacity: total)
        }
    }

    /// Tier rank per kind present: kinds in their nominal order, renumbered from 0.
    private static func rankByKind(_ nodes: [MemoryNode]) -> [MemoryKind: Int] {
        let present = Set(nodes.map(\.kind)).sorted { $0.nominalOrder < $1.nominalOrder }
        var result: [MemoryKind: Int] = [:]
        for (i, kind) in present.enumerated() { result[kind] = i }
        return result
    }

    // MARK: - Per-node decision

    private struct Baseline {
        var nodes: [Int]
        var latency: MemoryFigure?
        var bandwidth: MemoryFigure?
        var kernelTier: Int?
        var why: String
    }

    private static func decide(_ node: MemoryNode, baseline: Baseline?, all: [MemoryNode]) -> (MemoryKind, [String]) {
        var evidence: [String] = []
        let cpuFact: String? = switch node.hasCPUs {
        case true?: "has CPUs \(node.cpus) (sysfs has_cpu / cpumap)"
        case false?: "CPU-less (no CPUs in sysfs has_cpu / cpumap)"
        case nil: nil
        }
        if let subtype = node.hwlocSubtype {
            let kind: MemoryKind? = switch subtype.uppercased() {
            case "HBM", "MCDRAM": .hbm
            case "NVM": .persistentMemory
            case "GPUMEMORY": .gpuMemory
            case "DRAM": .dram
            default: subtype.uppercased().contains("CXL") ? .farMemory : nil
            }
            if let kind {
                evidence.append("hwloc subtype \(subtype)")
                if let cpuFact { evidence.append(cpuFact) }
                appendFigures(node, to: &evidence)
                return (kind, evidence)
            }
            evidence.append("hwloc subtype \(subtype) does not say the memory technology")
        }
        if node.hwlocInfo["DAXType"] == "NVM" {
            evidence.append("onlined from an NVDIMM DAX device (hwloc DAXType=NVM, DAXDevice=\(node.hwlocInfo["DAXDevice"] ?? "?"))")
            return (.persistentMemory, evidence)
        }
        if node.hasCPUs == true {
            evidence.append(cpuFact ?? "has CPUs")
            appendFigures(node, to: &evidence)
            return (.dram, evidence)
        }
        if let cpuFact { evidence.append(cpuFact) }

        // Compare with DRAM when both sides have figures.
        if let baseline, !baseline.nodes.contains(node.osIndex) {
            let latency = bestFigure(node, latency: true)
            let bandwidth = bestFigure(node, latency: false)
            var slower: [String] = []
            var faster: [String] = []
            if let l = latency, let b = baseline.latency {
                let ratio = Double(l.value) / Double(b.value)
                let text = "\(l.metric.rawValue) \(l.value) ns vs DRAM \(b.value) ns (\(l.evidence))"
                if ratio >= farLatencyRatio { slower.append(text) } else { faster.append(text) }
            }
            if let w = bandwidth, let b = baseline.bandwidth {
                let ratio = Double(w.value) / Double(b.value)
                let text = "\(w.metric.rawValue) \(w.value) MiB/s vs DRAM \(b.value) MiB/s (\(w.evidence))"
                if ratio <= farBandwidthRatio { slower.append(text) }
                else if ratio >= hbmBandwidthRatio && slower.isEmpty {
                    evidence.append("bandwidth above DRAM: " + text + "; DRAM baseline: \(baseline.why)")
                    return (.hbm, evidence)
                } else { faster.append(text) }
            }
            if !slower.isEmpty {
                evidence.append("slower than DRAM: " + slower.joined(separator: "; "))
                evidence.append("DRAM baseline: \(baseline.why)")
                return (.farMemory, evidence)
            }
            if !faster.isEmpty {
                evidence.append("figures comparable to DRAM: " + faster.joined(separator: "; "))
                return (.dram, evidence)
            }
        }
        if let baseline, baseline.nodes.contains(node.osIndex), baseline.why.hasPrefix("lowest-latency") {
            appendFigures(node, to: &evidence)
            evidence.append("no subtype; among the lowest-latency nodes, which are taken as DRAM")
            return (.dram, evidence)
        }
        if let tier = node.kernelTier, let dramTier = baseline?.kernelTier, tier > dramTier {
            evidence.append("kernel memory tier \(tier) is below DRAM's tier \(dramTier) (/sys/devices/virtual/memory_tiering)")
            return (.farMemory, evidence)
        }
        if !node.cxl.isEmpty {
            evidence.append("backed by CXL: \(node.cxl.joined(separator: ", ")) (/sys/bus/cxl)")
            return (.farMemory, evidence)
        }
        if node.hasCPUs == false, let kmem = node.dax.first(where: { $0.driver == "kmem" }) {
            evidence.append("CPU-less memory onlined from \(kmem.device) by the kmem driver (\(kmem.evidence))")
            return (.farMemory, evidence)
        }
        if node.figures.isEmpty {
            evidence.append("no subtype and no usable latency/bandwidth figures: taken as DRAM")
        } else {
            evidence.append("no DRAM baseline to compare figures with: taken as DRAM")
        }
        return (.dram, evidence)
    }

    private static func appendFigures(_ node: MemoryNode, to evidence: inout [String]) {
        if let l = bestFigure(node, latency: true) {
            evidence.append("\(l.metric.rawValue) \(l.value) ns from \(l.initiator) (\(l.evidence))")
        }
        if let b = bestFigure(node, latency: false) {
            evidence.append("\(b.metric.rawValue) \(b.value) MiB/s from \(b.initiator) (\(b.evidence))")
        }
    }

    /// DRAM's figures: from nodes with CPUs, else nodes hwloc calls DRAM, else (XML
    /// without either) the node(s) with the lowest latency, since DRAM is the closest memory.
    private static func dramBaseline(_ nodes: [MemoryNode]) -> Baseline? {
        var members = nodes.filter { $0.hasCPUs == true && isPlainDRAM($0) }
        var why = "nodes with CPUs"
        if members.isEmpty {
            members = nodes.filter { $0.hwlocSubtype?.uppercased() == "DRAM" }
            why = "nodes hwloc calls DRAM"
        }
        if members.isEmpty {
            let candidates = nodes.filter { isPlainDRAM($0) && bestFigure($0, latency: true) != nil }
            if let best = candidates.compactMap({ bestFigure($0, latency: true)?.value }).min() {
                members = candidates.filter { bestFigure($0, latency: true)?.value == best }
                why = "lowest-latency nodes"
            }
        }
        guard !members.isEmpty else { return nil }
        let latency = members.compactMap { bestFigure($0, latency: true) }.min { $0.value < $1.value }
        let bandwidth = members.compactMap { bestFigure($0, latency: false) }.max { $0.value < $1.value }
        let tier = members.compactMap(\.kernelTier).min()
        let list = CPUSet(members.map(\.osIndex)).description
        return Baseline(nodes: members.map(\.osIndex), latency: latency, bandwidth: bandwidth, kernelTier: tier,
                        why: "\(why) (node \(list))")
    }

    /// A node whose subtype does not already make it something other than DRAM.
    private static func isPlainDRAM(_ node: MemoryNode) -> Bool {
        guard let s = node.hwlocSubtype?.uppercased() else { return node.hwlocInfo["DAXType"] != "NVM" }
        return s == "DRAM"
    }

    /// The node's best figure from its closest initiator: the most trusted source that
    /// has one, read-specific metric before the generic one, lowest latency / highest bandwidth.
    static func bestFigure(_ node: MemoryNode, latency: Bool, initiatorCPUs: CPUSet? = nil) -> MemoryFigure? {
        let specific: FigureMetric = latency ? .readLatency : .readBandwidth
        let generic: FigureMetric = latency ? .latency : .bandwidth
        let candidates = node.figures.filter { f in
            (f.metric == specific || f.metric == generic)
                && (initiatorCPUs.map { f.initiator.cpus.intersects($0) } ?? true)
        }
        return candidates.min { a, b in
            if a.source.preference != b.source.preference { return a.source.preference < b.source.preference }
            if a.metric != b.metric { return a.metric == specific }
            return latency ? a.value < b.value : a.value > b.value
        }
    }

    private static func ordinal(_ n: Int) -> String {
        switch n {
        case 1: "1st"
        case 2: "2nd"
        case 3: "3rd"
        default: "\(n)th"
        }
    }
}
