// libFuzzer target: an ELF64 kernel through the PVH loader (ELFKernel, the
// Xen PVH note, segment grouping, hvm_start_info and plan validation), the
// way `snpvmm run --kernel FILE --initrd FILE` lays out a guest. Built with
// the VMMCore library by scripts/fuzz.
import GuestMemfd
import LaunchMeasurement
import Populate
import VMMCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTest(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    FuzzBoot.check(bytes) { (request) throws(ImageError) in try Loader.loadPVH(ELFKernel(request.kernel), request) }
    return 0
}
