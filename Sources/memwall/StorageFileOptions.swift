import ArgumentParser
import MemWallCore
import Transport

/// Where `bench storage` and `kv replay --real-bytes` put their bytes, and
/// whether they may write to something that exists. Both open their files
/// through ``open(_:option:scratchPrefix:byteCount:readOnly:)``, so the file
/// rules (see ``StorageTarget``) are the same for both.
struct StorageFileOptions: ParsableArguments {
    @Option(help: "Directory for private scratch files (created 0600 with unpredictable names, locked, and removed at exit, on failure and on SIGINT/SIGTERM/SIGHUP).")
    var dir: String = "/var/tmp"

    @Flag(help: "Allow writes to an existing file or block device (destroys its contents). Without it nothing that exists is written.")
    var allowWrite = false

    /// Opens the file the user named with `option` (created when absent, then
    /// removed when the run ends), or a private scratch file in `--dir`.
    /// - Parameters:
    ///   - readOnly: Nothing will be written: an existing file needs no consent.
    /// - Throws: errors that name `option` or `--dir` and, for an existing
    ///   file, the `--allow-write` flag.
    func open(_ path: String?, option: String, scratchPrefix: String, byteCount: Int64,
              readOnly: Bool = false) throws(MemWallError) -> StorageTarget {
        do throws(MemWallError) {
            guard let path else {
                return try StorageTarget.scratch(in: dir, prefix: scratchPrefix, byteCount: byteCount)
            }
            return try StorageTarget(path: path, createWithSize: byteCount,
                                     existing: readOnly ? .read : allowWrite ? .write : .refuse)
        } catch {
            var e = error
            e.message = "\(path == nil ? "--dir" : option): " + e.message
            throw e
        }
    }
}

