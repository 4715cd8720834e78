import KVPlacement
import MemWallCore
import Testing
import Topology

@Suite struct TierPlacementTests {
    static let labXML = TestPaths.repository + "/Tests/TopologyTests/Fixtures/lab-guest.xml"

    @Test func farTierGoesToTheCPULessNode() throws {
        let lab = try Topology.load(.xml(path: Self.labXML))
        let tiers = threeTiers(10, 10, 10)
        #expect(try TierPlacement.farMemoryNode(for: tiers, in: lab, requested: nil) == 1)
        #expect(try TierPlacement.farMemoryNode(for: tiers, in: lab, requested: 1) == 1)
        #expect(try TierPlacement.farMemoryNode(for: dram(10), in: lab, requested: nil) == nil)
    }

    @Test func aFarNodeThisMachineDoesNotHaveIsRefused() throws {
        let oneNode = try Topology.load(.synthetic("pack:1 numa:1 core:2 pu:1"))
        let tiers = threeTiers(10, 10, 10)
        // No far node and none asked for: the caller emulates.
        #expect(try TierPlacement.farMemoryNode(for: tiers, in: oneNode, requested: nil) == nil)
        do {
            _ = try TierPlacement.farMemoryNode(for: tiers, in: oneNode, requested: 3)
            Issue.record("a missing node was accepted")
        } catch {
            #expect(error.code == .notFound)
            #expect(error.message.contains("node 3 does not exist"))
        }
        do {
            _ = try TierPlacement.farMemoryNode(for: tiers, in: oneNode, requested: 0)
            Issue.record("a DRAM node was accepted as far memory")
        } catch {
            #expect(error.code == .invalidArgument)
        }
    }
}
