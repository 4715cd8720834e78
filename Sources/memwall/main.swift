import ArgumentParser

// Local stand-in for the lead's root command (MemWall.swift), so `memwall topo` runs on this branch.
struct MemWall: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "memwall", subcommands: [TopoCommand.self])
}
MemWall.main()
