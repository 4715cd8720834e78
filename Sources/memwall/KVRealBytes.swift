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

    static func makeStore(tiers: [TierSpec], blockBytes: Int, nvmePath: String) throws -> (TierStore, [TierBacking], [String]) {
        let built = try TierStore.build(tiers: tiers, blockBytes: blockBytes, registry: registry(), storagePath: nvmePath)
        let names = zip(tiers.dropFirst(), built.backings).map { t, b in
            "\(t.name): \(b.transport.name) (\(b.transport.capabilities.implementation)) to \(b.target)"
        }
        return (built.store, built.backings, names)
    }
}
