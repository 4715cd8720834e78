import MemWallCore

extension Topology {
    /// A picture of the topology as a standalone SVG document: packages on top, one
    /// column per memory tier (fastest on the left) with a box per node showing its
    /// capacity and figures, and devices at the bottom linked to their nearest node.
    public func svgText() -> String {
        var svg = SVGCanvas()
        let margin = 20.0
        let columnWidth = 230.0
        let nodeHeight = 62.0
        let gap = 10.0
        let columns = max(tiers.count, 1)
        let deviceWidth = 170.0
        let devicesPerRow = max(Int((Double(columns) * columnWidth - gap) / (deviceWidth + gap)), 3)
        let title = "MemWall topology: \(source)"
        let width = margin * 2 + max(Double(columns) * columnWidth, Double(devicesPerRow) * (deviceWidth + gap),
                                     Double(title.count) * 9.5)

        var y = margin
        svg.text(margin, y + 14, title, size: 16, weight: "bold")
        y += 24
        svg.text(margin, y + 12, "\(packages.count) package(s), \(coreCount) cores, \(processingUnitCount) PUs, \(nodes.count) memory node(s); hwloc API \(hwlocAPIVersion)", size: 12, color: "#444")
        y += 26

        // Packages.
        if !packages.isEmpty {
            let packageWidth = min(220.0, (width - margin * 2 - gap * Double(packages.count - 1)) / Double(packages.count))
            for (i, p) in packages.enumerated() {
                let x = margin + Double(i) * (packageWidth + gap)
                svg.rect(x, y, packageWidth, 40, fill: "#f2f2f2", stroke: "#888")
                svg.text(x + 8, y + 16, "Package \(p.index)", size: 12, weight: "bold")
                svg.text(x + 8, y + 32, "\(p.cores) cores, CPUs \(p.cpus)", size: 11, color: "#333")
            }
            y += 56
        }

        // Tier columns with node boxes.
        var nodeAnchor: [Int: (x: Double, y: Double)] = [:]
        var tallest = 0.0
        for (column, tier) in tiers.enumerated() {
            let x = margin + Double(column) * columnWidth
            let color = SVGCanvas.color(tier.kind)
            svg.rect(x, y, columnWidth - gap, 38, fill: color, stroke: color)
            svg.text(x + 8, y + 16, "tier \(tier.rank): \(tier.kind)", size: 12, weight: "bold", color: "#fff")
            let capacity = tier.capacity.map { "\($0) in " } ?? ""
            svg.text(x + 8, y + 31, "\(capacity)\(tier.nodes.count) node(s)", size: 11, color: "#fff")
            var ny = y + 38 + gap
            for index in tier.nodes {
                guard let n = node(index) else { continue }
                svg.rect(x, ny, columnWidth - gap, nodeHeight, fill: "#fff", stroke: color, strokeWidth: 2)
                var title = "node \(n.osIndex)"
                if let c = n.capacity { title += "  \(c)" }
                svg.text(x + 8, ny + 16, title, size: 12, weight: "bold")
                let cpus = switch n.hasCPUs {
                case true?: "CPUs \(n.cpus)"
                case false?: "CPU-less, near CPUs \(n.locality)"
                case nil: "near CPUs \(n.locality)"
                }
                svg.text(x + 8, ny + 32, cpus, size: 11, color: "#333")
                let l = MemoryClassifier.bestFigure(n, latency: true)
                let b = MemoryClassifier.bestFigure(n, latency: false)
                var figures: [String] = []
                if let l { figures.append("\(l.value) ns") }
                if let b { figures.append("\(ByteCount.format(Double(b.value) * 1_048_576))/s") }
                let source = (l ?? b).map { " (\($0.source.rawValue))" } ?? ""
                svg.text(x + 8, ny + 48, figures.isEmpty ? "no firmware figures" : figures.joined(separator: ", ") + source,
                         size: 11, color: figures.isEmpty ? "#999" : "#000")
                nodeAnchor[n.osIndex] = (x + (columnWidth - gap) / 2, ny + nodeHeight)
                ny += nodeHeight + gap
            }
            tallest = max(tallest, ny - y)
        }
        y += tallest + 30

        // Devices, linked to their nearest node.
        if !devices.isEmpty {
            svg.text(margin, y, "Devices (line: nearest node)", size: 12, weight: "bold")
            y += 12
            for (i, d) in devices.enumerated() {
                let row = i / devicesPerRow, col = i % devicesPerRow
                let x = margin + Double(col) * (deviceWidth + gap)
                let dy = y + Double(row) * (40 + gap + 16)
                if let near = d.nearestNode, let anchor = nodeAnchor[near] {
                    svg.curve(from: (x + deviceWidth / 2, dy), to: anchor)
                }
                svg.rect(x, dy, deviceWidth, 40, fill: "#eef4fb", stroke: "#5b7fa6")
                svg.text(x + 8, dy + 16, d.name, size: 12, weight: "bold")
                let near = d.nearestNode.map { "node \($0)" } ?? "no node"
                svg.text(x + 8, dy + 32, "\(d.kind.rawValue) → \(near)", size: 11, color: "#333")
            }
            let rows = (devices.count + devicesPerRow - 1) / devicesPerRow
            y += Double(rows) * (40 + gap + 16)
        }

        // Legend.
        var lx = margin
        for kind in MemoryKind.allCases {
            svg.rect(lx, y, 12, 12, fill: SVGCanvas.color(kind), stroke: SVGCanvas.color(kind))
            svg.text(lx + 16, y + 10, kind.description, size: 11)
            lx += 30 + Double(kind.description.count) * 6.5
        }
        y += 24
        return svg.document(width: width, height: y + margin)
    }
}

/// Builds SVG markup by hand: a few shapes and escaped text, no dependency.
struct SVGCanvas {
    private var body: [String] = []
    // Links are drawn first so boxes cover their ends.
    private var links: [String] = []

    static func color(_ kind: MemoryKind) -> String {
        switch kind {
        case .hbm: "#d95f02"
        case .dram: "#1b9e77"
        case .farMemory: "#7570b3"
        case .persistentMemory: "#e7298a"
        case .gpuMemory: "#66a61e"
        }
    }

    mutating func rect(_ x: Double, _ y: Double, _ w: Double, _ h: Double, fill: String, stroke: String, strokeWidth: Double = 1) {
        body.append("<rect x=\"\(n(x))\" y=\"\(n(y))\" width=\"\(n(w))\" height=\"\(n(h))\" rx=\"4\" fill=\"\(fill)\" stroke=\"\(stroke)\" stroke-width=\"\(n(strokeWidth))\"/>")
    }

    mutating func text(_ x: Double, _ y: Double, _ s: String, size: Int, weight: String = "normal", color: String = "#000") {
        body.append("<text x=\"\(n(x))\" y=\"\(n(y))\" font-family=\"sans-serif\" font-size=\"\(size)\" font-weight=\"\(weight)\" fill=\"\(color)\">\(SVGCanvas.escape(s))</text>")
    }

    mutating func curve(from a: (Double, Double), to b: (x: Double, y: Double)) {
        let midY = (a.1 + b.y) / 2
        links.append("<path d=\"M\(n(a.0)),\(n(a.1)) C\(n(a.0)),\(n(midY)) \(n(b.x)),\(n(midY)) \(n(b.x)),\(n(b.y))\" fill=\"none\" stroke=\"#5b7fa6\" stroke-opacity=\"0.6\" stroke-width=\"1.5\"/>")
    }

    func document(width: Double, height: Double) -> String {
        var out = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        out += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(n(width))\" height=\"\(n(height))\" viewBox=\"0 0 \(n(width)) \(n(height))\">\n"
        out += "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n"
        for l in links { out += l + "\n" }
        for b in body { out += b + "\n" }
        out += "</svg>\n"
        return out
    }

    static func escape(_ s: String) -> String {
        var out = ""
        for c in s {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            default: out.append(c)
            }
        }
        return out
    }

    private func n(_ v: Double) -> String { formatDecimal(v, places: v == v.rounded() ? 0 : 1) }
}
