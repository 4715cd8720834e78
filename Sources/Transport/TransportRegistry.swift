import MemWallCore
import Synchronization

/// Chooses a transport for a kind of target: hardware first, in rank order,
/// then emulation — counted, logged, and refusable.
public final class TransportRegistry: Sendable {
    private struct Entry { var rank: Int; var transport: any Transport }
    private let entries = Mutex<[Entry]>([])
    private let downgrades = Atomic<Int>(0)
    private let log: @Sendable (String) -> Void

    /// - Parameter log: Where downgrade notices go (`nil`: standard error).
    public init(log: (@Sendable (String) -> Void)? = nil) {
        self.log = log ?? { StandardError.write("memwall: " + $0 + "\n") }
    }

    /// Adds a transport; lower `rank` is preferred among equals in implementation.
    public func add(_ transport: any Transport, rank: Int) {
        entries.withLock { $0.append(Entry(rank: rank, transport: transport)) }
    }

    /// Every transport, best first.
    public var transports: [any Transport] {
        entries.withLock { $0.sorted { $0.rank < $1.rank }.map(\.transport) }
    }

    /// How many selections fell back to emulation.
    public var downgradeCount: Int { downgrades.load(ordering: .relaxed) }

    /// Picks the best transport that moves `target`.
    /// - Parameter requireHardware: Refuse emulation instead of downgrading.
    /// - Throws: `hardwareRequired` (with the reasons hardware is not usable),
    ///   or `unsupported` when nothing moves that kind of target.
    public func select(for target: LocationKind, requireHardware: Bool = false) throws(MemWallError) -> any Transport {
        let candidates = transports.filter { $0.capabilities.targets.contains(target) }
        if let hw = candidates.first(where: { $0.capabilities.implementation.isHardware }) { return hw }
        let why = candidates.compactMap { t -> String? in
            if case .unavailable(let r) = t.capabilities.implementation { return "\(t.name): \(r)" }
            return nil
        }.joined(separator: "; ")
        guard let emu = candidates.first(where: { $0.capabilities.implementation.isEmulation }) else {
            throw MemWallError(.unsupported,
                "no transport moves \(target) targets on this host" + (why.isEmpty ? "" : " (\(why))"))
        }
        if requireHardware {
            throw MemWallError(.hardwareRequired,
                "hardware was required for \(target) transfers but only '\(emu.name)' (\(emu.capabilities.implementation)) is available"
                    + (why.isEmpty ? "" : "; \(why)"))
        }
        downgrades.add(1, ordering: .relaxed)
        log("\(target) transfers use '\(emu.name)', \(emu.capabilities.implementation)")
        return emu
    }
}
