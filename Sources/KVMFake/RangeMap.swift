/// A map from 64-bit keys to values, stored as sorted non-overlapping runs
/// that split where a range is set and merge with equal neighbours, so that
/// state over gigabytes of guest pages costs a few entries. Keys without a
/// run map to `defaultValue`.
///
/// Setting a range costs a binary search plus the runs it replaces, so the
/// cost of an operation grows with the number of distinct runs, not with
/// the size of the range.
struct RangeMap<Value: Equatable> {
    struct Run: Equatable {
        var start: UInt64
        var end: UInt64  // exclusive
        var value: Value
    }

    private var runs: [Run] = []
    let defaultValue: Value

    init(defaultValue: Value) { self.defaultValue = defaultValue }

    /// The index of the first run ending after `key`.
    private func firstRun(endingAfter key: UInt64) -> Int {
        var low = 0, high = runs.count
        while low < high {
            let middle = (low + high) / 2
            if runs[middle].end <= key { low = middle + 1 } else { high = middle }
        }
        return low
    }

    func value(at key: UInt64) -> Value { segment(at: key).value }

    /// The value at `key` and the first key after it where the value may change.
    func segment(at key: UInt64) -> (value: Value, end: UInt64) {
        let index = firstRun(endingAfter: key)
        if index < runs.count, runs[index].start <= key { return (runs[index].value, runs[index].end) }
        return (defaultValue, index < runs.count ? runs[index].start : UInt64.max)
    }

    /// Calls `body` for each stretch of `start..<end` with one value, in
    /// order, default stretches included.
    func forEachSegment(_ start: UInt64, _ end: UInt64, _ body: (_ start: UInt64, _ end: UInt64, _ value: Value) throws -> Void) rethrows {
        var key = start
        var index = firstRun(endingAfter: key)
        while key < end {
            if index < runs.count, runs[index].start <= key {
                let stop = min(end, runs[index].end)
                try body(key, stop, runs[index].value)
                key = stop
                index += 1
            } else {
                let stop = min(end, index < runs.count ? runs[index].start : UInt64.max)
                try body(key, stop, defaultValue)
                key = stop
            }
        }
    }

    /// True when every key in `start..<end` maps to `value`.
    func allEqual(_ start: UInt64, _ end: UInt64, to value: Value) -> Bool {
        var key = start
        while key < end {
            let (runValue, runEnd) = segment(at: key)
            guard runValue == value else { return false }
            key = runEnd
        }
        return true
    }

    mutating func set(_ start: UInt64, _ end: UInt64, to value: Value) {
        guard start < end else { return }
        // Runs [first, last) overlap or touch the range; the touching ones may merge.
        var first = firstRun(endingAfter: start)
        if first > 0, runs[first - 1].end == start { first -= 1 }
        var last = first
        while last < runs.count, runs[last].start <= end { last += 1 }
        var replacement: [Run] = []
        replacement.reserveCapacity(3)
        func append(_ run: Run) {
            guard run.start < run.end, run.value != defaultValue else { return }
            if let previous = replacement.last, previous.end == run.start, previous.value == run.value {
                replacement[replacement.count - 1].end = run.end
            } else {
                replacement.append(run)
            }
        }
        if first < last {
            let head = runs[first]
            if head.start < start { append(Run(start: head.start, end: min(head.end, start), value: head.value)) }
        }
        append(Run(start: start, end: end, value: value))
        if first < last {
            let tail = runs[last - 1]
            if tail.end > end { append(Run(start: max(tail.start, end), end: tail.end, value: tail.value)) }
        }
        runs.replaceSubrange(first..<last, with: replacement)
    }

    /// Applies `change` to the value of every key in `start..<end`, stretch by stretch.
    mutating func update(_ start: UInt64, _ end: UInt64, _ change: (inout Value) -> Void) {
        var pieces: [(UInt64, UInt64, Value)] = []
        forEachSegment(start, end) { low, high, value in
            var changed = value
            change(&changed)
            if changed != value { pieces.append((low, high, changed)) }
        }
        for (low, high, value) in pieces { set(low, high, to: value) }
    }
}
