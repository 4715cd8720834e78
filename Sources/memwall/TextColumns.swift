extension String {
    /// The string followed by spaces up to `width` characters, for column layouts
    /// (Foundation's `padding(toLength:)` would pull in all of Foundation and ICU).
    func padded(to width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }
}
