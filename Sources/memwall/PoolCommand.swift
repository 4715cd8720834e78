import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif
import KVPlacement
import KVPool
import MemWallCore
import NUMATransport
import Transport

/// `memwall pool`: the host-wide KV pool in shared memory (create, inspect, destroy).
struct PoolCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pool",
        abstract: "Create, inspect and destroy a host-wide KV-block pool that every process attaches to by name.",
        discussion: """
            A pool is a shared segment (/dev/shm/memwall-pool-NAME, or $MEMWALL_POOL_DIR) holding its own \
            index and its blocks; processes attach by name and work on it with atomics and a robust \
            process-shared lock: no daemon. See docs/kv-pool.md.
            """,
        subcommands: [PoolCreateCommand.self, PoolStatCommand.self, PoolDestroyCommand.self, PoolWorkerCommand.self])
}

/// `memwall pool create NAME --size SIZE --block-bytes B [--node N]`.
struct PoolCreateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Create a pool (an existing name is refused; nothing is overwritten).")

    @Argument(help: "Pool name: 1 to 64 letters, digits, '.', '_' or '-'.")
    var name: String

    @Option(name: .long, help: "Size of the whole segment (e.g. 1G); the block count is what fits beside the tables. With --dax: at most this much of the device (default: all).")
    var size: String?

    @Option(name: .long, help: "Bytes per block, a multiple of 4096 (e.g. 256k).")
    var blockBytes: String = "256k"

    @Option(name: .long, help: "Bind the pages to this NUMA node (a CPU-less CXL node); default: not bound.")
    var node: Int?

    @Option(name: .long, help: "Put the pool on this device-DAX device (/dev/daxN.M, e.g. a CXL region) instead of /dev/shm; --size then caps how much of it is used.")
    var dax: String?

    @Flag(name: .long, help: "Consent to overwrite the --dax device (whatever it holds is destroyed).")
    var allowWrite = false

    @Option(name: .long, help: "Processes that can be attached at once (1 to 254; each costs 4 bytes per block).")
    var processes: Int = 32

    @OptionGroup var output: OutputOptions

    func validate() throws {
        if let size { _ = try OptionCheck.size("--size", size, 4096 ... (1 << 46)) }
        if dax == nil && size == nil { throw ValidationError("--size is required (with --dax it is optional: the whole device)") }
        if dax != nil && node != nil { throw ValidationError("give --node or --dax, not both: a DAX device's memory is where it is") }
        if allowWrite && dax == nil { throw ValidationError("--allow-write is for --dax only (a new /dev/shm segment overwrites nothing)") }
        _ = try OptionCheck.size("--block-bytes", blockBytes, 4096 ... (1 << 30))
        try OptionCheck.inRange("--processes", processes, 1 ... 254, unit: "processes")
        if let node { try OptionCheck.inRange("--node", node, 0 ... 1023) }
    }

    func run() throws {
        let block = try ByteCount.parse(blockBytes).rawValue
        let bytes = try size.map { s throws(MemWallError) in try ByteCount.parse(s).rawValue }
        let pool: KVPool
        if let dax {
            pool = try KVPool.create(name: name, device: dax, bytes: bytes, blockBytes: block, processes: processes, allowWrite: allowWrite)
        } else {
            pool = try KVPool.create(name: name, bytes: bytes ?? 0, blockBytes: block, node: node, processes: processes)
        }
        defer { pool.close() }
        let status = try pool.status(pages: node != nil)
        if output.json { try Output.printJSON(status) } else { PoolStatusText.print(status) }
    }
}

/// `memwall pool stat NAME [--json]`.
struct PoolStatCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stat",
        abstract: "Show a pool: blocks, bytes used and free, processes alive and dead, references, what was reclaimed, where its pages are.",
        discussion: "Reads the pool without attaching: processes that died are shown, not reclaimed (the next attach reclaims them).")

    @Argument(help: "Pool name.")
    var name: String

    @Flag(name: .customLong("no-pages"), help: "Do not ask the kernel where every page is (move_pages).")
    var noPages = false

    @OptionGroup var output: OutputOptions

    func run() throws {
        let status = try KVPool.status(name: name, pages: !noPages)
        if output.json { try Output.printJSON(status) } else { PoolStatusText.print(status) }
    }
}

/// `memwall pool destroy NAME [--force]`.
struct PoolDestroyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "destroy",
        abstract: "Remove a pool (refused while processes are attached, unless --force).")

    @Argument(help: "Pool name.")
    var name: String

    @Flag(name: .long, help: "Remove the name even while processes are attached (they keep the segment until they detach).")
    var force = false

    func run() throws {
        try KVPool.destroy(name: name, force: force)
    }
}

/// The text form of ``KVPoolStatus``.
enum PoolStatusText {
    static func print(_ s: KVPoolStatus) {
        Swift.print("KV pool '\(s.name)' (\(s.path)): \(ByteCount(s.segmentBytes)), blocks of \(ByteCount(s.blockBytes))")
        Swift.print("  blocks      \(s.blocks) of \(s.slots) slots; \(ByteCount(s.bytesUsed)) used, \(ByteCount(s.bytesFree)) free; \(s.reserved) being written")
        Swift.print("  processes   \(s.processesAlive) alive, \(s.processesDead) dead\(s.processesDead > 0 ? " (reclaimed by the next attach)" : ""); \(s.processSlots) slots")
        for p in s.processes {
            Swift.print("    #\(p.index) pid \(p.pid)  \(p.alive ? "alive" : "dead ")  references \(p.references)  reservations \(p.reservations)")
        }
        Swift.print("  references  \(s.references) held, \(s.referencesOfDead) by dead processes; \(s.reservationsOfDead) reservations of dead processes")
        Swift.print("  reclaimed   \(s.reclaimedProcesses) processes, \(s.reclaimedReferences) references, \(s.reclaimedReservations) reservations; \(s.repairs) lock-owner repairs")
        let order = ["lookups", "hits", "stores", "duplicates", "loads", "views", "evictions", "corrupt"]
        Swift.print("  counters    " + order.map { "\($0) \(s.counters[$0] ?? 0)" }.joined(separator: "  "))
        let bound = s.device.map { "on device-DAX \($0)" } ?? s.node.map { "bound to node \($0)\(s.nodeEmulated ? " (emulated far memory: DRAM)" : "")" } ?? "not bound to a node"
        if s.pagesPerNode.isEmpty {
            Swift.print("  pages       \(bound)")
        } else {
            let where_ = s.pagesPerNode.sorted { $0.key < $1.key }.map { $0.key == "absent" ? "\($0.value) not resident" : "node \($0.key): \($0.value)" }
            Swift.print("  pages       \(where_.joined(separator: ", ")) (\(bound))")
        }
        Swift.print("  consistent  " + (s.problems.isEmpty ? "yes" : "NO: " + s.problems.joined(separator: "; ")))
    }
}
