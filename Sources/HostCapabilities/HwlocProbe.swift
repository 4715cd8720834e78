import CHwloc
import Topology

/// hwloc's version and whether firmware (ACPI HMAT) gave latency/bandwidth
/// figures, read from the same Topology model `memwall topo` shows.
public struct HwlocProbe: Sendable, Codable, Hashable {
    /// Library version string of the hwloc MemWall was built against.
    public var version: String
    /// Live topology loaded.
    public var loads: Bool
    /// Why it did not.
    public var error: String?
    /// NUMA nodes hwloc sees.
    public var numaNodes: Int
    /// Nodes for which a latency figure exists (zero figures are not figures).
    public var nodesWithLatency: Int
    /// Nodes for which a bandwidth figure exists.
    public var nodesWithBandwidth: Int

    /// True when firmware gave at least one usable figure.
    public var hasFirmwareFigures: Bool { nodesWithLatency > 0 || nodesWithBandwidth > 0 }

    /// Loads the live topology once and counts the nodes with firmware figures; a topology
    /// that cannot load is reported (``loads`` false, ``error``), not thrown.
    public static func probe() -> HwlocProbe {
        let version = HWLOC_VERSION
        let topology: Topology
        do {
            topology = try Topology.load(.live)
        } catch {
            return HwlocProbe(version: version, loads: false, error: error.description,
                              numaNodes: 0, nodesWithLatency: 0, nodesWithBandwidth: 0)
        }
        let lat = topology.nodes.filter { $0.figures.contains { $0.metric.isLatency } }.count
        let bw = topology.nodes.filter { $0.figures.contains { !$0.metric.isLatency } }.count
        return HwlocProbe(version: version, loads: true, error: nil, numaNodes: topology.nodes.count,
                          nodesWithLatency: lat, nodesWithBandwidth: bw)
    }
}
