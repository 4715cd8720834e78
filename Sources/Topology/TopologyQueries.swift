import MemWallCore

/// How one memory node looks from one initiator (a CPU set or a device): its tier,
/// SLIT distance and HMAT figures, each figure with the file or attribute it came from.
public struct NodeAccess: Sendable, Hashable {
    /// The target node.
    public var node: MemoryNode
    /// Whether the node is local to the initiator (shares its CPUs).
    public var isLocal: Bool
    /// SLIT distance from the initiator's nearest node with CPUs, `nil` without a matrix.
    public var distance: UInt64?
    /// Best latency figure for this initiator (read latency preferred), `nil` if firmware gave none.
    public var latency: MemoryFigure?
    /// Best bandwidth figure for this initiator (read bandwidth preferred), `nil` if firmware gave none.
    public var bandwidth: MemoryFigure?
}

extension Topology {
    /// Every node as seen from `cpus`, grouped by tier (fastest tier first); inside a
    /// tier, local nodes first, then by SLIT distance, then by OS index.
    ///
    /// Figures are only those whose initiator shares a CPU with `cpus`; none is
    /// extrapolated from another initiator.
    public func tiers(from cpus: CPUSet) -> [[NodeAccess]] {
        let views = nodes.map { access(from: cpus, to: $0) }
        let ranks = Set(views.map(\.node.tierRank)).sorted()
        return ranks.map { rank in
            views.filter { $0.node.tierRank == rank }.sorted { a, b in
                if a.isLocal != b.isLocal { return a.isLocal }
                if a.distance != b.distance { return (a.distance ?? .max) < (b.distance ?? .max) }
                return a.node.osIndex < b.node.osIndex
            }
        }
    }

    /// Every node as seen from the device named `name` (`rxe0`, `nvme0n1`): the view
    /// from the CPUs of its nearest node (or from all CPUs when it has no locality).
    /// - Throws: ``MemWallError`` `notFound` naming the devices that do exist.
    public func tiers(fromDevice name: String) throws(MemWallError) -> [[NodeAccess]] {
        tiers(from: try initiatorCPUs(ofDevice: name))
    }

    /// The node a device's DMA buffers should live on.
    /// - Throws: ``MemWallError`` `notFound` when there is no such device or the topology has no node.
    public func nearestNode(toDevice name: String) throws(MemWallError) -> MemoryNode {
        let device = try requireDevice(name)
        guard let index = device.nearestNode, let node = node(index) else {
            throw MemWallError(.notFound, "device '\(name)' has no nearest memory node: the topology has no NUMA node")
        }
        return node
    }

    /// Distance and figures from the CPUs `cpus` to node `target`, each figure carrying
    /// its source (sysfs file or hwloc attribute); a figure the firmware did not give is `nil`.
    /// - Throws: ``MemWallError`` `invalidArgument` naming the valid node numbers.
    public func access(from cpus: CPUSet, toNode target: Int) throws(MemWallError) -> NodeAccess {
        guard let node = node(target) else {
            throw .invalid("node", target, expected: "one of \(CPUSet(nodes.map(\.osIndex)))")
        }
        return access(from: cpus, to: node)
    }

    /// All CPUs of the machine (union of packages, or of node localities when there is no package).
    public var allCPUs: CPUSet {
        let fromPackages = packages.flatMap(\.cpus.indexes)
        return CPUSet(fromPackages.isEmpty ? nodes.flatMap(\.locality.indexes) : fromPackages)
    }

    // MARK: - Internals

    func access(from cpus: CPUSet, to node: MemoryNode) -> NodeAccess {
        // The initiator's own nodes: those with CPUs in `cpus` (sysfs), else hwloc locality.
        // Without sysfs (XML), a CPU-less node shares its locality with the CPUs' own
        // node, so among the candidates only DRAM ones stand for the CPUs.
        let candidates = nodes.filter { n in
            n.hasCPUs == true ? n.cpus.intersects(cpus) : (n.hasCPUs == nil && n.locality.intersects(cpus))
        }
        let dramCandidates = candidates.filter { $0.kind == .dram }
        let initiatorNodes = dramCandidates.isEmpty ? candidates : dramCandidates
        let distance = initiatorNodes.compactMap { distances?.distance(from: $0.osIndex, to: node.osIndex) }.min()
        return NodeAccess(
            node: node, isLocal: initiatorNodes.contains { $0.osIndex == node.osIndex },
            distance: distance,
            latency: MemoryClassifier.bestFigure(node, latency: true, initiatorCPUs: cpus),
            bandwidth: MemoryClassifier.bestFigure(node, latency: false, initiatorCPUs: cpus))
    }

    private func requireDevice(_ name: String) throws(MemWallError) -> Device {
        guard let device = device(named: name) else {
            let known = devices.map(\.name).joined(separator: ", ")
            throw MemWallError(.notFound, "no device named '\(name)'; devices here: \(known.isEmpty ? "none" : known)")
        }
        return device
    }

    private func initiatorCPUs(ofDevice name: String) throws(MemWallError) -> CPUSet {
        let device = try requireDevice(name)
        guard let index = device.nearestNode, let node = node(index) else { return allCPUs }
        if node.hasCPUs == true { return node.cpus }
        return node.locality.isEmpty ? allCPUs : node.locality
    }
}
