import Foundation
import KVPlacement
import MemWallCore
import NUMATransport
import Testing
import Transport
import URingTransport

/// A real-bytes store, its transports and their threads go away when the last
/// user lets go: nothing the replay started keeps the process alive.
@Suite struct TierStoreShutdownTests {
    @Test func storeAndTransportsAreReleasedAfterARealBytesReplay() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("memwall-kv-shutdown-\(getpid()).bin").path
        defer { unlink(path) }
        weak var weakStore: TierStore?
        weak var weakNUMA: NUMATransport?
        weak var weakStorage: AnyObject?
        try {
            let trace = try MooncakeTrace.load(path: TestPaths.shippedTrace, limit: 200)
            let tiers = threeTiers(60, 200, 2000)
            // A one-node host gets the emulated pool; force it so the copy pool is
            // used on every host (a 64 KiB inline limit makes 4 KiB blocks inline,
            // so also move a large region to start the copy threads).
            let numa = NUMATransport(allocator: NUMAAllocator(emulateFarMemory: true))
            let storage = try URingTransport.makeWithFallback()
            let registry = TransportRegistry(log: { _ in })
            registry.add(numa, rank: 0)
            registry.add(storage, rank: 0)
            let allocator = numa.allocator
            let node = try #require(allocator.emulatedNode)
            let far: ((Int) throws -> MemoryRegion)? = { bytes in try allocator.allocate(byteCount: bytes, on: node) }
            let built = try TierStore.build(tiers: tiers, blockBytes: 4096, registry: registry, storagePath: path, farMemory: far)
            #expect(built.backings.map(\.transport.name) == ["numa", storage.name])
            let r = try TraceReplay.run(trace, tiers: tiers, policy: .lru, store: built.store)
            #expect(r.statistics.demotions > 0 && r.verifiedReads > 0)
            // Start the NUMA copy threads too (copies above the inline limit use them).
            let big = try MemoryRegion.allocate(byteCount: 4 << 20)
            let farBig = try allocator.allocate(byteCount: 4 << 20, on: node)
            try numa.register(big)
            try numa.post(numa.prepare(.write, [TransferDescriptor(local: big, target: .memory(farBig), length: 4 << 20)])).waitBlocking()
            try numa.deregister(big)
            weakStore = built.store
            weakNUMA = numa
            weakStorage = storage as AnyObject
        }()
        #expect(weakStore == nil, "the byte store outlived its replay")
        #expect(weakNUMA == nil, "the NUMA transport (and its copy threads) outlived the store")
        #expect(weakStorage == nil, "the storage transport (and its completion thread) outlived the store")
    }
}
