import MemWallCore
import Synchronization

/// The handles one kind of object (regions, caches, transfers) is known by across the C ABI.
///
/// A handle is a number, not an address: `tag << 56 | generation << 24 | (slot + 1)`. C never
/// dereferences it, and the library only ever reads it back through this table, so a handle
/// that was closed, that belongs to another kind, or that was never issued is found out and
/// refused with `misuse` — it cannot reach freed memory. The generation grows each time a slot
/// is emptied, so a stale handle is never mistaken for a newer object in the same slot.
final class HandleTable<Object: AnyObject & Sendable>: Sendable {
    private struct Slot {
        var generation: UInt32
        var object: Object?
    }

    private struct State {
        var slots: [Slot] = []
        var free: [Int] = []
        var live = 0
    }

    /// Distinguishes the kinds' handles (never 0, so no handle is NULL).
    private let tag: UInt64
    /// What the C header calls this kind ("mw_region"), for messages.
    let kind: String
    private let state = Mutex(State())

    /// Most live handles of one kind (the slot field has 24 bits).
    static var capacity: Int { (1 << 24) - 1 }

    init(tag: UInt8, kind: String) {
        precondition(tag != 0, "a zero tag could make a NULL handle")
        self.tag = UInt64(tag)
        self.kind = kind
    }

    /// A fresh handle for `object`.
    /// - Throws: `busy` when the kind already has ``capacity`` live handles.
    func insert(_ object: Object) throws(MemWallError) -> OpaquePointer {
        let bits: UInt64? = state.withLock { s in
            let index: Int
            if let reused = s.free.popLast() {
                index = reused
            } else {
                guard s.slots.count < Self.capacity else { return nil }
                s.slots.append(Slot(generation: 1, object: nil))
                index = s.slots.count - 1
            }
            s.slots[index].object = object
            s.live += 1
            return tag << 56 | UInt64(s.slots[index].generation) << 24 | UInt64(index + 1)
        }
        guard let bits, let handle = OpaquePointer(bitPattern: UInt(bits)) else {
            throw MemWallError(.busy, "too many open \(kind) handles (\(Self.capacity)); close some first")
        }
        return handle
    }

    /// The object behind `handle`.
    /// - Throws: `invalidArgument` for NULL; `misuse` for a closed, foreign or forged handle.
    func object(_ handle: OpaquePointer?) throws(MemWallError) -> Object {
        let (index, generation) = try decode(handle)
        let found = state.withLock { s -> Object? in
            guard index < s.slots.count, s.slots[index].generation == generation else { return nil }
            return s.slots[index].object
        }
        guard let found else { throw stale(handle) }
        return found
    }

    /// Removes `handle` and returns its object, after `check` (run under the table's lock, so
    /// no other close can interleave) accepted it.
    /// - Throws: as ``object(_:)``, or what `check` throws (then nothing is removed).
    func remove(_ handle: OpaquePointer?, check: (Object) throws(MemWallError) -> Void = { _ in }) throws(MemWallError) -> Object {
        let (index, generation) = try decode(handle)
        let result = state.withLock { s -> Result<Object, MemWallError> in
            guard index < s.slots.count, s.slots[index].generation == generation,
                  let object = s.slots[index].object else { return .failure(stale(handle)) }
            do throws(MemWallError) {
                try check(object)
            } catch {
                return .failure(error)
            }
            s.slots[index].object = nil
            s.slots[index].generation &+= 1
            if s.slots[index].generation == 0 { s.slots[index].generation = 1 }
            s.free.append(index)
            s.live -= 1
            return .success(object)
        }
        return try result.get()
    }

    /// Every live object (for closing what depends on a closed cache).
    var objects: [Object] { state.withLock { s in s.slots.compactMap(\.object) } }

    /// Live handles.
    var count: Int { state.withLock { $0.live } }

    private func decode(_ handle: OpaquePointer?) throws(MemWallError) -> (Int, UInt32) {
        guard let handle else {
            throw MemWallError(.invalidArgument, "the \(kind) handle is NULL; pass one the library returned")
        }
        let bits = UInt64(UInt(bitPattern: handle))
        let slot = Int(bits & 0xFF_FFFF)
        guard bits >> 56 == tag, slot > 0 else { throw stale(handle) }
        return (slot - 1, UInt32(truncatingIfNeeded: bits >> 24))
    }

    private func stale(_ handle: OpaquePointer?) -> MemWallError {
        let text = handle.map { "0x" + String(UInt(bitPattern: $0), radix: 16) } ?? "NULL"
        return MemWallError(.misuse,
            "\(text) is not an open \(kind) handle: it was closed already, belongs to another kind, or was never returned by libmemwall")
    }
}
