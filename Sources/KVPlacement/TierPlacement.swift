import MemWallCore
import Topology

/// Where the cache's tiers live on a machine, decided from its ``Topology``.
public enum TierPlacement {
    /// The NUMA node that backs the far-memory tier.
    ///
    /// - Parameters:
    ///   - tiers: The configured tiers; without a far-memory tier the answer is `nil`.
    ///   - topology: The machine (live, or an hwloc XML / sysfs snapshot).
    ///   - requested: A node the user asked for, or `nil` to take the machine's first
    ///     far-memory node (a CPU-less node slower than DRAM, as Topology classified it).
    /// - Returns: The node, or `nil` when there is no far tier, or no far-memory node
    ///   and none was requested (the caller then emulates far memory and says so).
    /// - Throws: `notFound` for a requested node the machine does not have;
    ///   `invalidArgument` for a requested node that is not far memory.
    public static func farMemoryNode(for tiers: [TierSpec], in topology: Topology,
                                     requested: Int?) throws(MemWallError) -> Int? {
        guard tiers.contains(where: { $0.kind == .farMemory }) else { return nil }
        let present = topology.nodes.map { "\($0.osIndex) (\($0.kind))" }.joined(separator: ", ")
        guard let requested else {
            return topology.nodes.first(where: { $0.kind == .farMemory })?.osIndex
        }
        guard let node = topology.nodes.first(where: { $0.osIndex == requested }) else {
            throw MemWallError(.notFound,
                "far-memory tier: NUMA node \(requested) does not exist on this machine; nodes: \(present.isEmpty ? "none" : present)")
        }
        guard node.kind == .farMemory else {
            throw MemWallError(.invalidArgument,
                "far-memory tier: NUMA node \(requested) is \(node.kind), not far memory; nodes: \(present)")
        }
        return requested
    }
}
