import MemWallCore

/// How far one storage descriptor got, and the one rule for what a read or
/// write result means for it — shared by every storage path (io_uring's
/// request path and direct queue, the pread/pwrite pool), so they cannot
/// drift apart on short transfers, EOF or transient errors.
///
/// The rule: a short transfer continues from where it stopped; EAGAIN and
/// EINTR are retried up to ``maximumRetries`` times; 0 bytes before the end
/// is `shortTransfer` (the file ends before the descriptor does); any other
/// errno fails the descriptor, naming the file and the bytes already moved;
/// a short transfer of a request that asked to cancel finishes as cancelled.
package struct StorageProgress: Sendable {
    /// Transient errors (EAGAIN, EINTR) tolerated per descriptor before it fails.
    package static let maximumRetries = 64

    /// Bytes already moved.
    package private(set) var done = 0
    /// Transient errors already retried.
    package private(set) var retries = 0

    /// Nothing moved yet.
    package init() {}

    /// What to do after one result.
    package enum Step: Sendable {
        /// Issue the rest (a short transfer) or the same again (a transient error).
        case again
        /// The descriptor is final.
        case finished(Result<Int, MemWallError>)
    }

    /// Applies one result of `function` to the descriptor.
    /// - Parameters:
    ///   - result: Bytes the call moved, or `-errno`.
    ///   - length, offset: The whole descriptor's length and file offset.
    ///   - path: The file's path, for messages (evaluated only on failure).
    ///   - cancelRequested: Whether the owner asked to cancel (checked only
    ///     before continuing a short transfer, when nothing is in flight).
    package mutating func advance(by result: Int, function: String, isRead: Bool, length: Int, offset: Int64,
                                  path: @autoclosure () -> String,
                                  cancelRequested: @autoclosure () -> Bool = false) -> Step {
        if result < 0 {
            let e = Errno(rawValue: Int32(truncatingIfNeeded: -result))
            if (e == .wouldBlock || e == .interrupted) && retries < StorageProgress.maximumRetries {
                retries += 1
                return .again
            }
            return .finished(.failure(.system(function, e,
                "\(isRead ? "read" : "write") of \(length) bytes at offset \(offset) of '\(path())' failed after \(done) bytes")))
        }
        if result == 0 {
            return .finished(.failure(MemWallError(.shortTransfer,
                "\(function) of '\(path())' moved 0 bytes after \(done) of \(length) at offset \(offset): the file ends before the descriptor does",
                function: function)))
        }
        done += result
        guard done < length else { return .finished(.success(length)) }
        if cancelRequested() {
            return .finished(.failure(MemWallError(.cancelled, "cancelled after \(done) of \(length) bytes")))
        }
        return .again
    }
}
