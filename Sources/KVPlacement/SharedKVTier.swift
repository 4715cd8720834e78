import MemWallCore

/// A tier every process of the host shares — the host-wide KV pool (`KVPool`) — as a
/// ``KVCache`` sees it: a store with its own index, its own eviction and a capacity
/// shared by every process attached to it, so the cache's index neither plans for it
/// nor counts its blocks. The cache asks it whether blocks are there, copies blocks out
/// of it, and writes the blocks it stores into it as well (one copy for the host).
///
/// Implementations are thread-safe and do their own checks: every block read is
/// checked against its checksum; a block another process evicts between a lookup and
/// a load is a per-block `notFound`.
public protocol SharedKVTier: AnyObject, Sendable {
    /// Name for reports (the pool's name).
    var name: String { get }
    /// Bytes per block; must equal the cache's.
    var blockBytes: Int { get }
    /// Leading `keys` present now.
    func lookup(_ keys: [BlockKey]) throws(MemWallError) -> KVLookup
    /// Copies the blocks `keys` into `destinations` (``blockBytes`` each), checking each one.
    func load(_ keys: [BlockKey], into destinations: [UnsafeMutableRawPointer]) throws(MemWallError) -> KVTransferResult
    /// Writes `sources` (``blockBytes`` each) as the chain `keys` after `parent`; blocks present are skipped.
    func store(_ keys: [BlockKey], from sources: [UnsafeRawPointer], after parent: BlockKey?) throws(MemWallError) -> KVTransferResult
}

/// Names of host-wide KV pools (`pool:NAME` tiers, `memwall pool create NAME`): checked in one place.
public enum KVPoolName {
    /// Whether `name` is 1–64 letters, digits, '.', '_' or '-', not starting with '.' (so it is
    /// one path component, never "..", and no hidden file).
    public static func isValid(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 64 && !name.hasPrefix(".") && name.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2E || c == 0x5F || c == 0x2D
        }
    }

    /// What ``isValid(_:)`` accepts, for messages.
    public static let rule = "1 to 64 letters, digits, '.', '_' or '-', not starting with '.'"
}
