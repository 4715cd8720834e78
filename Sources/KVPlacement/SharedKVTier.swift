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
