import MemWallCore
import Synchronization

/// One side of a planned move: a payload slot of a tier, or one of the
/// caller's buffers of the operation (by position).
enum MoveEnd: Equatable, Sendable {
    case slot(tier: Int, slot: Int32)
    case buffer(Int)

    /// The slot, when this end is one.
    var slot: (tier: Int, slot: Int32)? {
        if case let .slot(t, s) = self { return (t, s) }
        return nil
    }
}

/// One move of one block's bytes, as the index planned it.
struct PlannedMove: Sendable {
    /// What the move is for; decides what completion records.
    enum Purpose: Sendable {
        /// Between tiers (demotion, promotion) or a copy-on-write within DRAM: the bytes carry `checksum`.
        case relocate
        /// The caller's bytes into the block's slot: their checksum is computed on the way and becomes the block's.
        case store
        /// The block's bytes into the caller's buffer: checked against `checksum` on arrival.
        case load
        /// Write-through: the caller's bytes also into the block's copy in the last tier
        /// (``PayloadLedger/shadow``); a failure drops the copy, not the block.
        case shadow

        /// Writes the caller's bytes (their checksum is computed on the way).
        var storesCallerBytes: Bool { self == .store || self == .shadow }
    }

    /// The block's entry in the index.
    var entry: Int32
    var key: BlockKey
    var from: MoveEnd
    var to: MoveEnd
    var purpose: Purpose
    /// The checksum the bytes carry (relocate, load).
    var checksum: UInt64
    /// Position of the block in the operation's keys (per-block errors); -1 for moves the index chose.
    var keyIndex: Int
    /// Moves of one stage run together; a stage starts when the one before it has finished.
    var stage = 0
}

/// What one index operation asks the store to move, and what it holds
/// until the bytes have landed.
///
/// Moves are recorded in the order the index decided them, and that order is
/// their meaning: a slot freed by one decision may be handed to a later one in
/// the same operation. ``seal()`` turns the order into stages by the hazards
/// on each slot (read after write, write after read, write after write), so
/// moves that touch different slots — nearly all of them — run together, every
/// tier at once, and a reused slot is written only after its old bytes left.
/// Slots freed during the operation stay with the plan (``pool``) and return
/// to their tiers only when the plan completes, because the plan's own moves
/// may still be reading them; no other operation can be handed them meanwhile.
struct MovePlan: Sendable {
    /// Process-unique number (loads waiting for a block being moved wait for this plan).
    var id: UInt64 = 0
    var moves: [PlannedMove] = []
    /// Per tier: payload slots freed while planning; reusable by this plan only.
    var pool: [[Int32]]
    /// Entries held (referenced, in flight) until completion: blocks of `moves`.
    var held: [Int32] = []
    /// Highest stage + 1.
    var stageCount = 0

    init(tiers: Int) { pool = Array(repeating: [], count: tiers) }

    var isEmpty: Bool { moves.isEmpty && held.isEmpty && pool.allSatisfy(\.isEmpty) }

    /// Orders the moves into stages by the hazards on the slots they read and write.
    mutating func computeStages() {
        struct Access { var lastWrite = -1; var lastRead = -1 }
        var slots: [Int64: Access] = [:]
        func key(_ t: Int, _ s: Int32) -> Int64 { Int64(t) << 32 | Int64(UInt32(bitPattern: s)) }
        var highest = -1
        for i in moves.indices {
            var stage = 0
            if let r = moves[i].from.slot {
                let a = slots[key(r.tier, r.slot)] ?? Access()
                stage = max(stage, a.lastWrite + 1)                          // read after write
            }
            if let w = moves[i].to.slot {
                let a = slots[key(w.tier, w.slot)] ?? Access()
                stage = max(stage, a.lastWrite + 1, a.lastRead + 1)          // write after write / read
            }
            moves[i].stage = stage
            if let r = moves[i].from.slot {
                let k = key(r.tier, r.slot)
                slots[k, default: Access()].lastRead = max(slots[k, default: Access()].lastRead, stage)
            }
            if let w = moves[i].to.slot { slots[key(w.tier, w.slot), default: Access()].lastWrite = stage }
            highest = max(highest, stage)
        }
        stageCount = highest + 1
    }
}

/// Where every cached block's bytes are: the payload slot of each entry in
/// its tier (the tier itself is the entry's), the checksum its bytes carry,
/// and each tier's free slots. Part of the index, so one owner knows a block's
/// tier and slot; present only when the index keeps bytes.
struct PayloadLedger {
    /// Entry → payload slot in its tier (-1: none).
    var slotOf: [Int32] = []
    /// Entry → checksum of its bytes.
    var checksum: [UInt64] = []
    /// Per tier: slots nobody uses.
    private var free: [[Int32]]
    /// Per tier: the next slot never used (slots are handed out low first, so a
    /// prefix stored in order sits in adjacent slots and moves as larger I/Os).
    private var fresh: [Int32]
    /// Per tier: slots its backing holds (capacity plus spare for moves in flight).
    let limit: [Int32]
    /// Write-through copies: entry → its slot in the last tier, while the block
    /// itself lives in a faster one. Counted in the last tier's occupancy (they
    /// use its capacity) and given up first when it needs room; a demotion into
    /// the last tier takes the copy over and writes nothing.
    var shadow: [Int32: Int32] = [:]
    /// Entries with a copy, oldest first (the order copies are given up in; stale entries skipped).
    var shadowOrder: [Int32] = []
    var shadowHead = 0
    /// Entries in flight in some plan, and how many plans hold each.
    var inFlight: [Int32: UInt16] = [:]
    /// Entries whose bytes are on their way to the slot the entry names, and the plan moving them.
    var movingBy: [Int32: UInt64] = [:]
    /// The operation being planned.
    var plan: MovePlan

    private static let nextPlan = Atomic<UInt64>(1)

    /// - Parameter slots: Payload slots per tier.
    init(slots: [Int]) {
        limit = slots.map { Int32(clamping: $0) }
        free = Array(repeating: [], count: slots.count)
        fresh = Array(repeating: 0, count: slots.count)
        plan = MovePlan(tiers: slots.count)
    }

    /// Makes room for entry `e`'s facts.
    mutating func ensure(_ e: Int32) {
        while slotOf.count <= Int(e) { slotOf.append(-1); checksum.append(0) }
    }

    /// Whether a slot of `tier` can be handed out now.
    func canAllocate(_ tier: Int) -> Bool {
        !free[tier].isEmpty || fresh[tier] < limit[tier] || !plan.pool[tier].isEmpty
    }

    /// A slot of `tier`: a free one, a never-used one, or one this plan freed
    /// (its writer is then ordered after its readers by ``MovePlan/computeStages()``).
    mutating func allocate(_ tier: Int) -> Int32? {
        if let s = free[tier].popLast() { return s }
        if fresh[tier] < limit[tier] { defer { fresh[tier] += 1 }; return fresh[tier] }
        return plan.pool[tier].popLast()
    }

    /// Gives a slot back; it returns to its tier when the plan completes.
    mutating func release(_ tier: Int, _ slot: Int32) {
        if slot >= 0 { plan.pool[tier].append(slot) }
    }

    /// Ends planning: the moves get stages and a plan number; the pool goes with the plan.
    mutating func takePlan() -> MovePlan {
        var p = plan
        plan = MovePlan(tiers: limit.count)
        p.id = PayloadLedger.nextPlan.wrappingAdd(1, ordering: .relaxed).oldValue
        p.computeStages()
        return p
    }

    /// A completed plan's slots become free.
    mutating func returnSlots(of plan: MovePlan) {
        for t in plan.pool.indices { free[t].append(contentsOf: plan.pool[t]) }
    }

    /// Slots handed out per tier (for invariants): every cached block holds one, plus the plans' pools.
    func slotsInUse(_ tier: Int) -> Int { Int(fresh[tier]) - free[tier].count }
}
