import KVPlacement
import MemWallCore
import NUMATransport
import Transport
import URingTransport

/// Builds the byte store for `--real-bytes` from the transports this build has.
enum KVRealBytes {
    /// Every transport this build of memwall can move KV blocks with, best first:
    /// the NUMA transport for far memory (hardware on a multi-node host, a
    /// labelled emulated pool otherwise), io_uring for the NVMe tier (or the
    /// labelled pread pool when the kernel refuses io_uring), and a plain CPU
    /// copy as the last resort between host regions.
    /// - Parameter storage: How the io_uring transport is set up (`bench kv --qd` sets its queue depth).
    static func registry(numa: NUMATransport, storage: URingConfiguration = URingConfiguration()) throws(MemWallError) -> TransportRegistry {
        let r = TransportRegistry()
        r.add(numa, rank: 0)
        r.add(try URingTransport.makeWithFallback(configuration: storage), rank: 0)
        r.add(MemoryCopyTransport(), rank: 10)
        return r
    }

    /// - Parameter farNode: The far-memory node Topology chose (see ``TierPlacement``);
    ///   `nil` on a host without one, where the NUMA allocator's emulated pool serves.
    /// - Parameter storage: The target of the NVMe tier at a position in `tiers`
    ///   (see ``TierStore/build(tiers:blockBytes:registry:storage:farMemory:)``).
    static func makeStore(tiers: [TierSpec], blockBytes: Int, farNode: Int?,
                          storage: (Int, Int64) throws(MemWallError) -> StorageTarget) throws -> (TierStore, [TierBacking], [String]) {
        let numa = NUMATransport()
        let allocator = numa.allocator
        guard let node = farNode ?? allocator.emulatedNode else {
            throw MemWallError(.unsupported,
                "no far-memory node: this host has several NUMA nodes but none is CPU-less; give one with --far-node")
        }
        // A local closure, not a method reference: passing the method directly
        // crashes the Swift 6.3 compiler at the typed-throws call site.
        let far: ((Int) throws -> MemoryRegion)? = { bytes in try allocator.allocate(byteCount: bytes, on: node) }
        let built = try TierStore.build(tiers: tiers, blockBytes: blockBytes, registry: try registry(numa: numa),
                                        storage: storage, farMemory: far)
        let names = zip(tiers.dropFirst(), built.backings).map { t, b in
            "\(t.name): \(b.transport.name) (\(b.transport.capabilities.implementation)) to \(b.target)"
        }
        return (built.store, built.backings, names)
    }
}
