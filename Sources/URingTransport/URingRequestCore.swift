#if canImport(Glibc)
import Glibc
#endif
import CURing
import MemWallCore
import Transport

/// One storage descriptor on its way through a ring — the io_uring request
/// core shared by the transport's request path (``URingEngine``) and the
/// direct queue: how an SQE is filled for it, and what a CQE means for it
/// (under ``StorageProgress``'s rule, after the ``SyscallFunnel``).
struct URingIO {
    /// One SQE moves at most this much; longer descriptors continue like short transfers.
    static let maximumChunk = 1 << 30

    /// Fixed-file slot when ``fixedFile``, else the file descriptor.
    var file: Int32
    var fixedFile: Bool
    var bufferAddress: UInt
    /// Registered-buffer slot, or -1 for a plain read/write.
    var bufferIndex: Int32
    var length: Int
    var offset: Int64
    var isRead: Bool
    var progress = StorageProgress()

    init(file: Int32, fixedFile: Bool, bufferAddress: UInt, bufferIndex: Int32, length: Int, offset: Int64, isRead: Bool) {
        self.file = file
        self.fixedFile = fixedFile
        self.bufferAddress = bufferAddress
        self.bufferIndex = bufferIndex
        self.length = length
        self.offset = offset
        self.isRead = isRead
    }

    /// The funnel's name for this I/O's completions.
    var function: String { isRead ? "io_uring.read" : "io_uring.write" }

    /// Writes the SQE for what is left of the descriptor (at most ``maximumChunk``).
    func fill(_ sqe: UnsafeMutablePointer<io_uring_sqe>) {
        let done = progress.done
        let address = UnsafeMutableRawPointer(bitPattern: bufferAddress + UInt(done))
        let count = UInt32(min(length - done, URingIO.maximumChunk))
        let at = UInt64(offset + Int64(done))
        switch (isRead, bufferIndex >= 0) {
        case (true, true): io_uring_prep_read_fixed(sqe, file, address, count, at, bufferIndex)
        case (true, false): io_uring_prep_read(sqe, file, address, count, at)
        case (false, true): io_uring_prep_write_fixed(sqe, file, address, count, at, bufferIndex)
        case (false, false): io_uring_prep_write(sqe, file, address, count, at)
        }
        if fixedFile { sqe.pointee.flags |= UInt8(1 << IOSQE_FIXED_FILE_BIT) }
    }

    /// Applies one CQE result: final, or `again` (the rest of a short
    /// transfer, or a retry, is to be pushed).
    mutating func settle(_ raw: Int32, funnel: SyscallFunnel, path: @autoclosure () -> String,
                         cancelRequested: @autoclosure () -> Bool = false) -> StorageProgress.Step {
        let function = self.function
        let res = funnel.completion(function, requested: min(length - progress.done, URingIO.maximumChunk), result: raw)
        return progress.advance(by: Int(res), function: function, isRead: isRead, length: length, offset: offset,
                                path: path(), cancelRequested: cancelRequested())
    }
}

/// The fixed files of one ring: which target each slot names.
///
/// A slot holds its target weakly: a file the ring registered is released
/// (its slot emptied, so the ring stops holding the file open) once its
/// target is gone — at once where the ring's owner asked the target to tell
/// it (``StorageTarget/onClose(_:)``), else on the next registration, or when
/// the ring goes.
/// While any prepared transfer or I/O names a target, that transfer holds the
/// target, so its slot cannot be reused under it.
struct URingFileTable {
    private struct Entry {
        let id: ObjectIdentifier
        weak var target: StorageTarget?
    }
    private var entries: [Entry?]

    /// A table of `slots` entries (the ring's sparse file table has as many).
    init(slots: Int) { entries = Array(repeating: nil, count: slots) }

    /// The fixed-file slot naming `target`, registering it on first use.
    /// - Returns: The slot, or `nil` with the kernel's refusal (`nil` too
    ///   when every slot names a live target); `registered` is true when this
    ///   call registered the file (its owner may then ask to hear when it goes).
    mutating func slot(for target: StorageTarget, in queue: borrowing URingQueue) -> (slot: Int32?, refusal: Errno?, registered: Bool) {
        let id = ObjectIdentifier(target)
        for i in entries.indices where entries[i]?.id == id {
            if entries[i]?.target === target { return (Int32(i), nil, false) }
        }
        // A miss: release the files of targets that are gone, then take a free slot.
        var free: Int?
        for i in entries.indices {
            guard let e = entries[i] else { if free == nil { free = i }; continue }
            if e.target == nil {
                _ = queue.setFile(Int32(i), to: -1)
                entries[i] = nil
                if free == nil { free = i }
            }
        }
        guard let slot = free else { return (nil, nil, false) }
        if let refusal = queue.setFile(Int32(slot), to: target.fileDescriptor) { return (nil, refusal, false) }
        entries[slot] = Entry(id: id, target: target)
        return (Int32(slot), nil, true)
    }

    /// Empties `slot` if it still names the target `id`, which is going (its
    /// weak reference is already nil): the ring stops holding its file now.
    mutating func release(slot: Int32, of id: ObjectIdentifier, in queue: borrowing URingQueue) {
        let i = Int(slot)
        guard i >= 0, i < entries.count, let e = entries[i], e.id == id, e.target == nil else { return }
        _ = queue.setFile(slot, to: -1)
        entries[i] = nil
    }
}
