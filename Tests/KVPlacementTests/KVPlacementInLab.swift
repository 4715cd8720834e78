import Foundation
import KVPlacement
import MemWallCore
import NUMATransport
import Testing
import Transport
import URingTransport

/// Real-bytes replays in the lab guest: far memory on the CPU-less node 1
/// through the NUMA transport, the NVMe tier on /dev/nvme0n1 through io_uring
/// with O_DIRECT. Every read-back is verified, and the hit rates must equal a
/// metadata-only replay of the same requests (bytes never change decisions).
@Suite(.enabled(if: ProcessInfo.processInfo.environment["MEMWALL_LAB"] == "1", "runs in the lab guest (make lab)"))
struct KVPlacementInLab {
    static let nvmeDevice = "/dev/nvme0n1"
    static let farNode = 1

    @Test func realBytesReplayOnCXLNodeAndNVMeMatchesMetadataReplay() throws {
        let trace = try MooncakeTrace.load(path: TestPaths.shippedTrace, limit: 500)
        let tiers = [TierSpec(name: "dram", kind: .dram, capacityBlocks: 150),
                     TierSpec(name: "far", kind: .farMemory, capacityBlocks: 450),
                     TierSpec(name: "nvme", kind: .nvme, capacityBlocks: 3000)]

        let numa = NUMATransport()
        #expect(numa.capabilities.implementation == .hardware, "numa transport: \(numa.capabilities.implementation)")
        let node = try numa.allocator.node(Self.farNode)
        #expect(node.isCPUless && !node.isEmulated, "node 1 should be a real CPU-less node: \(node)")
        let uring = try URingTransport()
        #expect(uring.capabilities.implementation == .hardware)

        let registry = TransportRegistry(log: { _ in })
        registry.add(numa, rank: 0)
        registry.add(uring, rank: 0)
        registry.add(MemoryCopyTransport(), rank: 10)

        // The NUMA allocator binds the far tier's pages to node 1, exactly as
        // `memwall kv replay --real-bytes` does; keep the region to ask the
        // kernel afterwards where its pages really are.
        let allocator = numa.allocator
        let farNode = Self.farNode
        var farRegions: [MemoryRegion] = []
        let far: ((Int) throws -> MemoryRegion)? = { bytes in
            let r = try allocator.allocate(byteCount: bytes, on: farNode)
            farRegions.append(r)
            return r
        }
        // The device is shared with the other lab suites: queue for it (its lock) rather than write it together.
        let built = try TierStore.build(tiers: tiers, blockBytes: 4096, registry: registry,
                                        storage: { _, bytes throws(MemWallError) in
                                            try StorageTarget(path: Self.nvmeDevice, createWithSize: bytes, existing: .write,
                                                              waitForLock: true)
                                        },
                                        farMemory: far)
        #expect(built.backings.map(\.transport.name) == ["numa", "io_uring"])
        #expect(built.backings.allSatisfy { $0.transport.capabilities.implementation == .hardware })

        let real = try TraceReplay.run(trace, tiers: tiers, policy: .lfuda, store: built.store)
        let metadata = try TraceReplay.run(trace, tiers: tiers, policy: .lfuda)
        let s = real.statistics, m = metadata.statistics

        // Same decisions with and without bytes.
        #expect(s.lookups == m.lookups)
        #expect(s.hitsByTier == m.hitsByTier)
        #expect(s.promotions == m.promotions && s.demotions == m.demotions && s.drops == m.drops)
        #expect(real.prefillTokensSaved == metadata.prefillTokensSaved)
        // Hits came back from NVMe (read by io_uring straight into the replay's buffers,
        // O_DIRECT, and checked against their checksum on arrival).
        #expect(s.hitsByTier[0] > 0 && s.hitsByTier[2] > 0, "hits by tier: \(s.hitsByTier)")
        // Every hit was compared with its deterministic contents (a mismatch throws),
        // and every move between tiers that lands in host memory was checked on arrival too
        // (a demotion written to NVMe is checked when it comes back).
        #expect(real.verifiedReads == s.hits, "verified \(real.verifiedReads), hits \(s.hits)")
        let demotionsToNVMe = real.bytesMoved.filter { $0.key.hasPrefix("io_uring:") && $0.key.hasSuffix("-> nvme")
            && !$0.key.contains("caller") }.values.reduce(0, +) / 4096
        #expect(built.store.verifiedReads == s.hits + s.promotions + s.demotions - demotionsToNVMe)

        // Far-tier bytes were copied by the CPU into node 1's pages; NVMe bytes went through io_uring.
        let farBytes = real.bytesMoved.filter { $0.key.hasPrefix("cpu:") && $0.key.contains("far") }.values.reduce(0, +)
        let uringBytes = real.bytesMoved.filter { $0.key.hasPrefix("io_uring:") }.values.reduce(0, +)
        #expect(farBytes > 0 && uringBytes > 0, "\(real.bytesMoved)")

        // The far tier's pages are on node 1, per the kernel.
        let farRegion = try #require(farRegions.first)
        let pages = try allocator.pageLocations(of: farRegion)
        #expect(pages.pagesPerNode.keys.sorted() == [Self.farNode], "far tier pages: \(pages.pagesPerNode), \(pages.notPresent) not present")

        print("KVPlacementInLab: \(trace.requests.count) requests, hit rate \(s.hitRate) (metadata-only \(m.hitRate)), "
              + "hits by tier \(s.hitsByTier), promotions \(s.promotions), demotions \(s.demotions), "
              + "verified reads \(real.verifiedReads), far pages \(pages.pagesPerNode)")
        for (path, bytes) in real.bytesMoved.sorted(by: { $0.key < $1.key }) {
            print("KVPlacementInLab:   \(path): \(ByteCount(bytes))")
        }
        withExtendedLifetime(built.backings) {}
    }
}
