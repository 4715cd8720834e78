import MemWallCore

extension Topology {
    /// The human view of `memwall topo`: tiers first, then each node with its figures
    /// and the reasons for its classification, the SLIT matrix, devices and notes.
    public func terminalText() -> String {
        var out: [String] = []
        out.append("MemWall topology: \(source) (hwloc API \(hwlocAPIVersion))")
        let pkg = packages.count == 1 ? "package" : "packages"
        out.append("Machine: \(packages.count) \(pkg), \(coreCount) cores, \(processingUnitCount) PUs, \(nodes.count) memory node\(nodes.count == 1 ? "" : "s")")
        out.append("")
        out.append("Memory tiers (fastest first)")
        let kindWidth = tiers.map(\.kind.description.count).max() ?? 4
        for t in tiers {
            let capacity = t.capacity.map { "  \($0)" } ?? ""
            let list = t.nodes.count == 1 ? "node \(t.nodes[0])" : "nodes \(CPUSet(t.nodes))"
            out.append("  tier \(t.rank)  \(pad(t.kind.description, kindWidth))  \(list)\(capacity)\(tierFigures(t))")
        }
        out.append("")
        out.append("Nodes")
        for n in nodes.sorted(by: { ($0.tierRank, $0.osIndex) < ($1.tierRank, $1.osIndex) }) {
            var head = "  node \(n.osIndex)  \(n.kind)  tier \(n.tierRank)"
            if let c = n.capacity { head += "  \(c)" }
            if let f = n.free { head += " (\(f) free)" }
            switch n.hasCPUs {
            case true?: head += "  CPUs \(n.cpus)"
            case false?: head += "  CPU-less"
            case nil: break
            }
            head += "  near CPUs \(n.locality.isEmpty ? "none" : n.locality.description) (\(n.attachedTo))"
            out.append(head)
            if let l = MemoryClassifier.bestFigure(n, latency: true) {
                out.append("      latency   \(l.value) ns  [\(l.source.rawValue), from \(l.initiator)]")
            }
            if let b = MemoryClassifier.bestFigure(n, latency: false) {
                out.append("      bandwidth \(b.value) MiB/s (\(ByteCount.format(Double(b.value) * 1_048_576))/s)  [\(b.source.rawValue), from \(b.initiator)]")
            }
            if let t = n.kernelTier { out.append("      kernel memory tier \(t)") }
            for c in n.memorySideCaches { out.append("      memory-side cache L\(c.depth) \(c.size)") }
            for d in n.dax { out.append("      DAX \(d.device) driver \(d.driver ?? "none")") }
            for c in n.cxl { out.append("      CXL \(c)") }
            if !n.ignoredZeroFigures.isEmpty {
                out.append("      \(n.ignoredZeroFigures.count) zero firmware figure(s) ignored")
            }
            for e in n.evidence { out.append("      why: \(e)") }
        }
        if let d = distances {
            out.append("")
            if d.nodes.count <= 16 {
                out.append("SLIT distances (10 = local)")
                let width = max(5, (d.values.flatMap { $0 }.map { String($0).count }.max() ?? 2) + 1)
                out.append("  " + pad("", 6) + d.nodes.map { lpad("n\($0)", width) }.joined())
                for (i, row) in d.values.enumerated() {
                    out.append("  " + pad("n\(d.nodes[i])", 6) + row.map { lpad(String($0), width) }.joined())
                }
            } else {
                let all = d.values.flatMap { $0 }
                out.append("SLIT distances: \(d.nodes.count)x\(d.nodes.count) matrix, \(all.min() ?? 0)..\(all.max() ?? 0) (see --json)")
            }
        }
        out.append("")
        out.append("Devices")
        if devices.isEmpty { out.append("  none found") }
        let nameWidth = min(24, devices.map(\.name.count).max() ?? 4)
        for d in devices {
            let near = d.nearestNode.map { "node \($0)" } ?? "no node"
            let pci = d.pciAddress.map { "  PCI \($0)" } ?? ""
            out.append("  \(pad(d.kind.rawValue, 10)) \(pad(d.name, nameWidth))  nearest \(near)\(pci)")
            out.append("      why: \(d.evidence)")
        }
        if !notes.isEmpty {
            out.append("")
            out.append("Notes")
            for n in notes { out.append("  - \(n)") }
        }
        return out.joined(separator: "\n") + "\n"
    }

    private func tierFigures(_ tier: MemoryTier) -> String {
        let members = tier.nodes.compactMap(node)
        let latencies = members.compactMap { MemoryClassifier.bestFigure($0, latency: true)?.value }
        let bandwidths = members.compactMap { MemoryClassifier.bestFigure($0, latency: false)?.value }
        var parts: [String] = []
        if let lo = latencies.min(), let hi = latencies.max() {
            parts.append(lo == hi ? "\(lo) ns" : "\(lo)-\(hi) ns")
        }
        if let lo = bandwidths.min(), let hi = bandwidths.max() {
            parts.append(lo == hi ? "\(lo) MiB/s" : "\(lo)-\(hi) MiB/s")
        }
        return parts.isEmpty ? "  (no firmware figures)" : "  " + parts.joined(separator: ", ")
    }
}

func pad(_ s: String, _ width: Int) -> String {
    s.count >= width ? s : s + String(repeating: " ", count: width - s.count)
}

func lpad(_ s: String, _ width: Int) -> String {
    s.count >= width ? " " + s : String(repeating: " ", count: width - s.count) + s
}
