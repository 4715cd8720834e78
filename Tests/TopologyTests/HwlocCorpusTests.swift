import Foundation
import MemWallCore
import Testing
@testable import Topology

/// Every topology of hwloc's own test suite (../shared/data/hwloc-xml) loads and is
/// what it is known to be.
@Suite(.enabled(if: TestData.hasCorpus, "needs ../shared/data/hwloc-xml (the hwloc test corpus), absent here"))
struct HwlocCorpusTests {
    @Test("top-level XML: NUMA node count equals lstopo's", arguments: TestData.corpusFiles(".", suffix: ".xml"))
    func topLevelXMLNodeCounts(file: String) throws {
        let path = TestData.corpusPath(file)
        let topology = try Topology.load(.xml(path: path))
        let expected = try TestData.lstopoNodeCount(arguments: ["-i", path]) ?? TestData.numaNodeCount(inXML: path)
        #expect(topology.nodes.count == expected)
        #expect(!topology.tiers.isEmpty)
        #expect(topology.tiers.flatMap(\.nodes).sorted() == topology.nodes.map(\.osIndex).sorted())
    }

    @Test("linux-fsroot snapshot: NUMA node count equals lstopo 2.9's export",
          arguments: TestData.corpusFiles("linux-fsroot", suffix: ".tar.bz2"))
    func fsrootNodeCounts(tarball: String) throws {
        let root = try TestData.extractSnapshot(TestData.corpusPath("linux-fsroot/\(tarball)"))
        let topology = try Topology.load(.fsroot(path: root))
        let stem = String(tarball.dropLast(".tar.bz2".count))
        let reference = TestData.corpusPath("linux-fsroot/\(stem).lstopo-2.9.0.xml")
        #expect(topology.nodes.count == (try TestData.numaNodeCount(inXML: reference)))
        // What sysfs says must have been read: every node knows whether it has CPUs.
        #expect(topology.nodes.allSatisfy { $0.hasCPUs != nil })
    }

    @Test("Knights Landing files yield an HBM tier above a DRAM tier",
          arguments: ["64intel64-fakeKNL-SNC4-hybrid.xml", "8intel64-fakeKNL-A2A-hybrid.rootattachednumas.xml"])
    func knightsLanding(file: String) throws {
        let topology = try Topology.load(.xml(path: TestData.corpusPath(file)))
        #expect(topology.tiers.map(\.kind) == [.hbm, .dram])
        for node in topology.nodes where node.kind == .hbm {
            #expect(node.evidence.contains { $0.contains("MCDRAM") })
        }
    }

    @Test func fakeHeteroMemTiersYieldsDRAMHBMAndNVM() throws {
        let root = try TestData.extractSnapshot(TestData.corpusPath("linux-fsroot/fakeheteromemtiers.tar.bz2"))
        let topology = try Topology.load(.fsroot(path: root))
        #expect(topology.tiers.map(\.kind) == [.hbm, .dram, .persistentMemory])
        // Bandwidths come from sysfs access1; its latencies are 0 and must be absent.
        let hbm = try #require(topology.nodes.first { $0.kind == .hbm })
        #expect(hbm.figures.contains { $0.source == .sysfsAccess1 && $0.metric == .readBandwidth && $0.value == 10000 })
        #expect(topology.nodes.allSatisfy { n in !n.figures.contains { $0.metric.isLatency } })
        #expect(topology.nodes.allSatisfy { !$0.ignoredZeroFigures.isEmpty })
    }

    @Test func daxNVMeAndRDMADevicesHaveTheirNearestNode() throws {
        let root = try TestData.extractSnapshot(
            TestData.corpusPath("linux-fsroot/32em64t-2n8c+dax+nvme+mic+dimms.tar.bz2"))
        let topology = try Topology.load(.fsroot(path: root))
        let hca = try #require(topology.device(named: "mlx4_0"))
        #expect(hca.kind == .rdma && hca.nearestNode == 1 && hca.pciAddress == "0000:82:00.0")
        #expect(hca.evidence.contains("/sys/class/infiniband/mlx4_0/device/numa_node = 1"))
        let nvme = try #require(topology.device(named: "nvme0n1"))
        #expect(nvme.kind == .block && nvme.nearestNode == 0)
        #expect(try topology.nearestNode(toDevice: "mlx4_0").osIndex == 1)
        // Seen from the HCA, its own node comes first in the DRAM tier.
        #expect(try topology.tiers(fromDevice: "mlx4_0").first?.first?.node.osIndex == 1)
    }

    @Test func fakeHeteroMemTiersDAXLinks() throws {
        let root = try TestData.extractSnapshot(TestData.corpusPath("linux-fsroot/fakeheteromemtiers.tar.bz2"))
        let topology = try Topology.load(.fsroot(path: root))
        let hbm = try #require(topology.node(4))
        #expect(hbm.dax.contains { $0.device == "dax1.0" && $0.driver == "kmem" && $0.targetNode == 4 })
    }

    @Test func fakeMemInitiatorsMemoryOnlyNodesAreCPULess() throws {
        let root = try TestData.extractSnapshot(
            TestData.corpusPath("linux-fsroot/fakememinitiators-1np2c+1npp+gi.tar.bz2"))
        let topology = try Topology.load(.fsroot(path: root))
        #expect(topology.nodes.map(\.osIndex) == [5, 6, 7, 8, 9, 10])
        #expect(topology.nodes.allSatisfy { $0.hasCPUs == false && $0.cpus.isEmpty })
        // Their locality comes from the initiator named in access1, not from own CPUs.
        let node5 = try #require(topology.node(5))
        #expect(node5.figures.contains { $0.source == .sysfsAccess1 && $0.initiator.nodes == [0] })
        #expect(Set(topology.tiers.map(\.kind)) == [.dram, .persistentMemory])
    }

    @Test func memorySideCachesZeroFiguresStayOutOfTheRanking() throws {
        let root = try TestData.extractSnapshot(TestData.corpusPath("linux-fsroot/memorysidecaches.tar.bz2"))
        let topology = try Topology.load(.fsroot(path: root))
        #expect(!topology.nodes.isEmpty)
        for node in topology.nodes {
            #expect(node.figures.allSatisfy { $0.value > 0 })
            #expect(!node.ignoredZeroFigures.isEmpty, "node \(node.osIndex) should record its zero HMAT files")
            #expect(!node.memorySideCaches.isEmpty)
            #expect(!node.evidence.contains { $0.contains(" 0 ns") || $0.contains(" 0 MiB/s") })
        }
        #expect(topology.tiers.count == 1)
        #expect(topology.notes.contains { $0.contains("were 0") })
    }

    @Test func heteromemDocYieldsHBMDRAMAndCXL() throws {
        let topology = try Topology.load(.xml(path: TestData.corpusPath("heteromem-doc-synthetic.v2-handconverted.xml")))
        #expect(topology.tiers.map(\.kind) == [.hbm, .dram, .farMemory])
        #expect(topology.node(4)?.evidence.first == "hwloc subtype CXL-DRAM")
    }

    @Test func cxlMemoryDevicesAreListed() throws {
        let topology = try Topology.load(.xml(path: TestData.corpusPath("cxlmem+dax.v2.xml")))
        #expect(topology.devices.filter { $0.kind == .cxlMemory }.map(\.name) == ["mem0", "mem1", "mem2", "mem3"])
        #expect(topology.devices.allSatisfy { $0.nearestNode == 0 })
    }

    @Test("hwloc XML v3 fails with an error naming the version",
          arguments: TestData.corpusFiles("v3-master", suffix: ".xml"))
    func version3Refused(file: String) throws {
        let path = TestData.corpusPath("v3-master/\(file)")
        let error = try #require(throws: MemWallError.self) { try Topology.load(.xml(path: path)) }
        #expect(error.code == .unsupported)
        #expect(error.message.contains("version 3.0"))
        #expect(!error.description.contains("\n"))
    }
}
