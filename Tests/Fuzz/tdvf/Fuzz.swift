// libFuzzer target: a TDVF image's footer table and TDX metadata
// (TDVFImage), then MRTD over its sections, as `snpvmm measure --mode tdx`
// computes it.
import GuestMemfd
import LaunchMeasurement
import Populate

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTest(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    do {
        let image = try TDVFImage(bytes: bytes)
        _ = image.mrtd
    } catch {
        let line = error.description
        if line.isEmpty || line.contains("\n") { fatalError("not one line: \(line.debugDescription)") }
    }
    return 0
}
