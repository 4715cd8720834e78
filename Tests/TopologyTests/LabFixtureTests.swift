import Foundation
import MemWallCore
import Testing
@testable import Topology

/// The lab guest's topology, captured in the guest (`lstopo --of xml` and
/// `hwloc-gather-topology`) and kept in Fixtures/, so its classification is
/// checked on any host.
@Suite struct LabFixtureTests {
    static let xml = TestData.fixtures.appendingPathComponent("lab-guest.xml").path
    static let tarball = TestData.fixtures.appendingPathComponent("lab-guest-fsroot.tar.bz2").path

    @Test func xmlExportShowsFarMemoryBelowDRAM() throws {
        let topology = try Topology.load(.xml(path: Self.xml))
        #expect(topology.tiers.map(\.kind) == [.dram, .farMemory])
        let far = try #require(topology.node(1))
        #expect(far.kind == .farMemory)
        #expect(far.tierRank == 1)
        let latency = try #require(MemoryClassifier.bestFigure(far, latency: true))
        let bandwidth = try #require(MemoryClassifier.bestFigure(far, latency: false))
        #expect(latency.value == 250 && latency.source == .hwlocMemoryAttribute)
        #expect(bandwidth.value == 64 * 1024 && bandwidth.source == .hwlocMemoryAttribute)
        #expect(topology.distances?.distance(from: 0, to: 1) == 26)
        #expect(topology.device(named: "nvme0n1")?.nearestNode == 0)
    }

    @Test func sysfsSnapshotGivesHMATFilesAsEvidence() throws {
        let root = try TestData.extractSnapshot(Self.tarball)
        let topology = try Topology.load(.fsroot(path: root))
        let dram = try #require(topology.node(0))
        let far = try #require(topology.node(1))
        #expect(dram.kind == .dram && dram.hasCPUs == true)
        #expect(far.kind == .farMemory && far.hasCPUs == false)
        #expect(far.tierRank > dram.tierRank)
        #expect(far.figures.contains {
            $0.metric == .readLatency && $0.value == 250
                && $0.evidence == "/sys/devices/system/node/node1/access0/initiators/read_latency"
        })
        #expect(far.figures.contains { $0.metric == .readBandwidth && $0.value == 65536 && $0.source == .sysfsAccess1 })
        #expect(far.evidence.contains { $0.contains("CPU-less") })
        #expect(far.evidence.contains { $0.contains("/sys/devices/system/node/node1/access1/initiators/read_latency") })
    }

    @Test func tiersSeenFromTheCPUsAndFromADevice() throws {
        let topology = try Topology.load(.xml(path: Self.xml))
        let view = topology.tiers(from: try CPUSet.parse("0-1"))
        #expect(view.map { $0.map(\.node.osIndex) } == [[0], [1]])
        #expect(view[1][0].latency?.value == 250)
        #expect(view[1][0].distance == 26)
        let fromDisk = try topology.tiers(fromDevice: "nvme0n1")
        #expect(fromDisk.first?.first?.node.osIndex == 0)
        #expect(try topology.nearestNode(toDevice: "nvme0n1").osIndex == 0)
        #expect(throws: MemWallError.self) { try topology.nearestNode(toDevice: "mlx5_0") }
        // From CPUs that are not initiators of any figure, no figure is borrowed.
        let foreign = try topology.access(from: CPUSet([64]), toNode: 1)
        #expect(foreign.latency == nil && foreign.bandwidth == nil)
    }
}

/// In the lab guest (CPU-less node 1 with HMAT 250 ns / 64 GB/s, /dev/nvme0n1, rxe0).
@Suite(.enabled(if: ProcessInfo.processInfo.environment["MEMWALL_LAB"] == "1", "runs in the lab guest (make lab)"))
struct TopologyInLab {
    @Test func farMemoryNodeWithHMATEvidence() throws {
        let topology = try Topology.load(.live)
        let dram = try #require(topology.node(0))
        let far = try #require(topology.node(1))
        #expect(dram.kind == .dram && dram.hasCPUs == true)
        #expect(far.kind == .farMemory && far.hasCPUs == false)
        #expect(far.tierRank > dram.tierRank)
        let latency = try #require(MemoryClassifier.bestFigure(far, latency: true))
        let bandwidth = try #require(MemoryClassifier.bestFigure(far, latency: false))
        #expect(latency.value == 250)
        #expect(bandwidth.value == 65536)
        #expect(latency.evidence.hasPrefix("/sys/devices/system/node/node1/access"))
        #expect(bandwidth.evidence.hasPrefix("/sys/devices/system/node/node1/access"))
        #expect(far.free != nil)
        print(topology.terminalText())
    }

    @Test func nvmeAndSoftRoCEHaveANearestNode() throws {
        let topology = try Topology.load(.live)
        let nvme = try #require(topology.device(named: "nvme0n1"))
        let rxe = try #require(topology.device(named: "rxe0"))
        #expect(nvme.kind == .block && nvme.nearestNode == 0)
        #expect(rxe.kind == .rdma && rxe.nearestNode == 0)
        #expect(try topology.nearestNode(toDevice: "rxe0").kind == .dram)
    }
}

#if canImport(FoundationXML)
import FoundationXML
#endif

/// The SVG picture is well-formed XML and shows every tier, node and device.
@Suite struct TopologySVGTests {
    @Test func labPictureShowsTiersNodesAndDevices() throws {
        let topology = try Topology.load(.xml(path: LabFixtureTests.xml))
        let svg = topology.svgText()
        let parser = XMLParser(data: Data(svg.utf8))
        #expect(parser.parse(), "SVG is not well-formed: \(String(describing: parser.parserError))")
        #expect(svg.contains("tier 0: DRAM") && svg.contains("tier 1: CXL / far memory"))
        #expect(svg.contains("node 0 ") && svg.contains("node 1 "))
        #expect(svg.contains("250 ns"))
        #expect(svg.contains(">nvme0n1<"))
        #expect(svg.contains("block → node 0"))
    }

    @Test func textIsEscaped() {
        #expect(SVGCanvas.escape("a<b & \"c\">") == "a&lt;b &amp; &quot;c&quot;&gt;")
    }
}
