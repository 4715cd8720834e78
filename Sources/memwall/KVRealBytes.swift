import KVPlacement
import MemWallCore
import Transport

/// Builds the byte store for `--real-bytes` from the transports this build has.
enum KVRealBytes {
    /// Every transport this build of memwall can move KV blocks with, best first.
    static func registry() -> TransportRegistry {
        let r = TransportRegistry()
        r.add(MemoryCopyTransport(), rank: 10)
        return r
    }

    /// - Parameter farNode: The far-memory node Topology chose (see ``TierPlacement``).
    static func makeStore(tiers: [TierSpec], blockBytes: Int, nvmePath: String, farNode: Int?) throws -> (TierStore, [TierBacking], [String]) {
        if let farNode {
            // Binding pages to a node is the NUMA transport's allocator; until it is part of
            // this build, the far tier is host memory, labelled emulated, and we say so.
            StandardError.write("memwall: far-memory tier: node \(farNode) is far memory, but this build has no NUMA allocator; using host memory labelled emulated\n")
        }
        let built = try TierStore.build(tiers: tiers, blockBytes: blockBytes, registry: registry(), storagePath: nvmePath)
        let names = zip(tiers.dropFirst(), built.backings).map { t, b in
            "\(t.name): \(b.transport.name) (\(b.transport.capabilities.implementation)) to \(b.target)"
        }
        return (built.store, built.backings, names)
    }
}
