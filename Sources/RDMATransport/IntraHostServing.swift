import MemWallCore
import Synchronization
import Transport

/// The listening side of the intra-host path: who this process is, and which
/// regions connected peers were handed the address (or the memfd) of.
///
/// A peer on the path writes and reads those addresses itself, so nothing
/// here can refuse it a descriptor (as a NIC cannot refuse a peer holding a
/// valid rkey). What this side keeps is the memory: each connection that was
/// handed addresses holds the regions behind them until it closes, and the
/// transport refuses to deregister them meanwhile, so no peer ever writes into
/// memory that was freed and reused.
final class IntraHostServing: Sendable {
    /// This process, as offered to peers.
    let identity: HostIdentity
    private let revealed = Mutex<[ObjectIdentifier: Int]>([:])

    init(identity: HostIdentity) { self.identity = identity }

    /// Answers one probe with challenge `(c0, c1)`: stores its answer at
    /// `challenge` (memory the connection owns), records that `exports` were
    /// revealed, and returns the offer to send.
    func offer(_ exports: [LocalExport], challenge: UnsafeMutableRawPointer, _ c0: UInt64, _ c1: UInt64) -> [UInt8] {
        let (a0, a1) = IntraHostChallenge.answer(c0, c1)
        challenge.storeBytes(of: a0, as: UInt64.self)
        challenge.storeBytes(of: a1, toByteOffset: 8, as: UInt64.self)
        revealed.withLock { r in for e in exports { r[ObjectIdentifier(e.region), default: 0] += 1 } }
        let infos = exports.map {
            ExportedRegionInfo(name: $0.name, byteCount: $0.length, access: $0.access,
                               address: UInt64(UInt(bitPattern: $0.region.baseAddress)) + UInt64($0.offset), key: $0.key)
        }
        // Exports of shareable regions name their memfd, which the region keeps open while revealed.
        let shared = exports.compactMap { e in
            e.region.sharedFile.map { IntraHostOffer.SharedExport(key: e.key, fd: $0, fileOffset: UInt64(e.offset)) }
        }
        return IntraHostOffer(identity: identity, challengeAddress: UInt64(UInt(bitPattern: challenge)), exports: infos,
                              shared: shared).encode()
    }

    /// The connection that was handed `exports` has closed.
    func conceal(_ exports: [LocalExport]) {
        revealed.withLock { r in
            for e in exports {
                let id = ObjectIdentifier(e.region)
                if let n = r[id], n > 1 { r[id] = n - 1 } else { r[id] = nil }
            }
        }
    }

    /// True while a connected peer knows where `region` is.
    func isRevealed(_ region: MemoryRegion) -> Bool {
        revealed.withLock { $0[ObjectIdentifier(region)] != nil }
    }
}
