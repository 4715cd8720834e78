@preconcurrency import CHwloc

/// hwloc's version and whether firmware (ACPI HMAT) gave latency/bandwidth figures.
struct HwlocProbe: Codable, Hashable {
    /// Library version string of the hwloc MemWall was built against.
    var version: String
    /// Live topology loaded.
    var loads: Bool
    /// Why it did not.
    var error: String?
    /// NUMA nodes hwloc sees.
    var numaNodes: Int
    /// Nodes for which a non-zero latency figure exists.
    var nodesWithLatency: Int
    /// Nodes for which a non-zero bandwidth figure exists.
    var nodesWithBandwidth: Int

    /// True when firmware gave at least one usable figure.
    var hasFirmwareFigures: Bool { nodesWithLatency > 0 || nodesWithBandwidth > 0 }

    static func probe() -> HwlocProbe {
        let version = HWLOC_VERSION
        var topo: hwloc_topology_t?
        guard hwloc_topology_init(&topo) == 0, let topo else {
            return HwlocProbe(version: version, loads: false, error: "hwloc_topology_init failed",
                              numaNodes: 0, nodesWithLatency: 0, nodesWithBandwidth: 0)
        }
        defer { hwloc_topology_destroy(topo) }
        guard hwloc_topology_load(topo) == 0 else {
            return HwlocProbe(version: version, loads: false, error: "hwloc_topology_load failed",
                              numaNodes: 0, nodesWithLatency: 0, nodesWithBandwidth: 0)
        }
        let n = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE)
        var lat = 0
        var bw = 0
        for i in 0..<max(n, 0) {
            guard let node = hwloc_get_obj_by_type(topo, HWLOC_OBJ_NUMANODE, UInt32(i)) else { continue }
            if hasNonZeroFigure(topo, node, hwloc_memattr_id_t(HWLOC_MEMATTR_ID_LATENCY.rawValue)) { lat += 1 }
            if hasNonZeroFigure(topo, node, hwloc_memattr_id_t(HWLOC_MEMATTR_ID_BANDWIDTH.rawValue)) { bw += 1 }
        }
        return HwlocProbe(version: version, loads: true, error: nil, numaNodes: Int(n),
                          nodesWithLatency: lat, nodesWithBandwidth: bw)
    }

    /// Zero figures (as on a 2LM Optane box) count as missing, never as data.
    private static func hasNonZeroFigure(_ topo: hwloc_topology_t, _ node: hwloc_obj_t, _ attr: hwloc_memattr_id_t) -> Bool {
        var count: UInt32 = 8
        var initiators = [hwloc_location](repeating: hwloc_location(), count: 8)
        var values = [hwloc_uint64_t](repeating: 0, count: 8)
        guard hwloc_memattr_get_initiators(topo, attr, node, 0, &count, &initiators, &values) == 0 else { return false }
        return values.prefix(Int(min(count, 8))).contains { $0 > 0 }
    }
}
