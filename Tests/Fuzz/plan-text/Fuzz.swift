// libFuzzer target: the launch-plan text decoder (`LaunchPlan(text:)`) and
// plan validation against a guest with a hole below 4 GiB. A plan that
// validates must hold the rules validation promises.
import GuestMemfd
import LaunchMeasurement
import Populate

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTest(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    let memory = [GuestRange(start: 0, size: 0xC000_0000), GuestRange(start: 0x1_0000_0000, size: 1 << 30)]
    let plan: LaunchPlan
    do {
        plan = try LaunchPlan(text: text)
    } catch {
        oneLine(error.description)
        return 0
    }
    do {
        try plan.validate(memory: memory)
    } catch {
        oneLine(error.description)
        return 0
    }
    for (index, region) in plan.regions.enumerated() {
        guard region.range.size > 0, region.range.isPageAligned, let end = region.range.end,
              memory.contains(where: { $0.start <= region.range.start && end <= $0.end! }),
              region.contents.count <= region.range.size
        else { fatalError("region \(index) passed validation: \(region)") }
        for other in plan.regions[(index + 1)...] where other.range.overlaps(region.range) {
            fatalError("regions '\(region.name)' and '\(other.name)' overlap but passed validation")
        }
    }
    return 0
}

func oneLine(_ line: String) {
    if line.isEmpty || line.contains("\n") { fatalError("not one line: \(line.debugDescription)") }
}
