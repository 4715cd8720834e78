import CHwloc
import Topology

/// hwloc's version and whether firmware (ACPI HMAT) gave latency/bandwidth
/// figures, read from the same Topology model `memwall topo` shows.
struct HwlocProbe: Codable, Hashable {
    /// Library version string of the hwloc MemWall was built against.
    var version: String
    /// Live topology loaded.
    var loads: Bool
    /// Why it did not.
    var error: String?
    /// NUMA nodes hwloc sees.
    var numaNodes: Int
    /// Nodes for which a latency figure exists (zero figures are not figures).
    var nodesWithLatency: Int
    /// Nodes for which a bandwidth figure exists.
    var nodesWithBandwidth: Int

    /// True when firmware gave at least one usable figure.
    var hasFirmwareFigures: Bool { nodesWithLatency > 0 || nodesWithBandwidth > 0 }

    static func probe() -> HwlocProbe {
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
