// libFuzzer target: a Linux bzImage through its loader (the setup header,
// boot_params, the e820 map, initrd placement and plan validation), the
// way `snpvmm run --kernel FILE --initrd FILE` lays out a guest. Built with
// the VMMCore library by scripts/fuzz.
import GuestMemfd
import LaunchMeasurement
import Populate
import VMMCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTest(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    FuzzBoot.check(bytes) { (request) throws(ImageError) in try Loader.loadBzImage(BzImage(request.kernel), request) }
    return 0
}
