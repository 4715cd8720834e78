extension Topology { public func svgText() -> String { "" } }
