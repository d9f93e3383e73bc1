// libFuzzer target: an OVMF image's footer (GUIDed) table and SEV metadata
// (OVMFImage), then the SNP launch updates, VMSAs and launch digest that
// `snpvmm measure --mode snp` computes for it, with and without the
// kernel-hashes page of a measured direct boot.
import GuestMemfd
import LaunchMeasurement
import Populate

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTest(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let image: OVMFImage
    do {
        image = try OVMFImage(bytes: bytes)
    } catch {
        oneLine(error.description)
        return 0
    }
    let hashes = SEVKernelHashes(kernel: [1, 2, 3], initrd: nil, cmdline: "console=ttyS0")
    for kernelHashes in [nil, hashes] {
        let measurement = SNPGuestMeasurement(vcpus: 2, vcpuSignature: 0xA00F11, kernelHashes: kernelHashes)
        do {
            let steps = try measurement.launchSteps(for: image)
            _ = try measurement.vmsaPages(for: image)
            if steps.isEmpty { fatalError("no launch updates for an image that parsed") }
            _ = try measurement.launchDigest(for: image)
        } catch {
            oneLine(error.description)
        }
    }
    return 0
}

func oneLine(_ line: String) {
    if line.isEmpty || line.contains("\n") { fatalError("not one line: \(line.debugDescription)") }
}
