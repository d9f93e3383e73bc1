import GuestMemfd
/// A map from 64-bit keys to values, stored as sorted non-overlapping runs,
/// so that attributes over gigabytes of guest frames cost a few entries.
/// Keys without a run map to `defaultValue`.
struct RangeMap<Value: Equatable> {
    private struct Run {
        var start: UInt64
        var end: UInt64  // exclusive
        var value: Value
    }

    private var runs: [Run] = []
    let defaultValue: Value

    init(defaultValue: Value) { self.defaultValue = defaultValue }

    func value(at key: UInt64) -> Value {
        var low = 0, high = runs.count
        while low < high {
            let middle = (low + high) / 2
            if runs[middle].end <= key { low = middle + 1 } else { high = middle }
        }
        if low < runs.count, runs[low].start <= key { return runs[low].value }
        return defaultValue
    }

    /// True when every key in `start..<end` maps to `value`.
    func allEqual(_ start: UInt64, _ end: UInt64, to value: Value) -> Bool {
        var key = start
        while key < end {
            guard let (runValue, runEnd) = segment(at: key), runValue == value else { return false }
            key = runEnd
        }
        return true
    }

    /// The value at `key` and the first key after it where the value may change.
    private func segment(at key: UInt64) -> (Value, UInt64)? {
        var low = 0, high = runs.count
        while low < high {
            let middle = (low + high) / 2
            if runs[middle].end <= key { low = middle + 1 } else { high = middle }
        }
        if low < runs.count, runs[low].start <= key { return (runs[low].value, runs[low].end) }
        let next = low < runs.count ? runs[low].start : UInt64.max
        return (defaultValue, next)
    }

    mutating func set(_ start: UInt64, _ end: UInt64, to value: Value) {
        guard start < end else { return }
        var result: [Run] = []
        result.reserveCapacity(runs.count + 2)
        for run in runs {
            if run.end <= start || run.start >= end {
                result.append(run)
                continue
            }
            if run.start < start { result.append(Run(start: run.start, end: start, value: run.value)) }
            if run.end > end { result.append(Run(start: end, end: run.end, value: run.value)) }
        }
        if value != defaultValue { result.append(Run(start: start, end: end, value: value)) }
        result.sort { $0.start < $1.start }
        // Merge neighbours with equal values.
        var merged: [Run] = []
        for run in result {
            if let last = merged.last, last.end == run.start, last.value == run.value {
                merged[merged.count - 1].end = run.end
            } else {
                merged.append(run)
            }
        }
        runs = merged
    }
}
