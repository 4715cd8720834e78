#if canImport(Glibc)
import Glibc
#endif
import CMemWallABI
import MemWallCore
import Synchronization

/// The strings libmemwall handed out and not yet got back, so that `mw_free_string` can refuse a
/// pointer it never returned or one freed twice (a `misuse`), instead of corrupting the heap.
enum ReturnedStrings {
    private static let live = Mutex<Set<UInt>>([])

    /// Copies `text` into malloc'd memory, remembers it and stores it in `*out`.
    static func hand(_ text: String, to out: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) throws(MemWallError) {
        guard let copy = strdup(text) else {
            throw .system("strdup", .current, "cannot allocate \(text.utf8.count + 1) bytes for the returned string")
        }
        _ = live.withLock { $0.insert(UInt(bitPattern: copy)) }
        out.pointee = copy
    }

    /// Frees `pointer` if this library returned it and it was not freed yet.
    static func free(_ pointer: UnsafeMutablePointer<CChar>) throws(MemWallError) {
        let known = live.withLock { $0.remove(UInt(bitPattern: pointer)) != nil }
        guard known else {
            throw MemWallError(.misuse,
                "0x\(String(UInt(bitPattern: pointer), radix: 16)) is not a string libmemwall returned, or it was freed already; nothing was freed")
        }
        Glibc.free(pointer)
    }
}

@c @implementation
public func mw_free_string(_ string: UnsafeMutablePointer<CChar>?) -> Int32 {
    ABI.run("mw_free_string") { () throws(MemWallError) in
        guard let string else { return }
        try ReturnedStrings.free(string)
    }
}
