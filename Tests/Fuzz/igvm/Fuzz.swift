// libFuzzer target: an IGVM file's fixed header, variable headers and
// cross-header rules (IGVMFile), then its SEV-SNP launch (IGVMSNPLaunch) with
// and without KVM's rules and ZERO pages, and the launch digest, as
// `snpvmm measure --mode snp --igvm` computes it.
import LaunchMeasurement

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTest(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    func oneLine(_ error: some Error & CustomStringConvertible) {
        let line = error.description
        if line.isEmpty || line.contains("\n") { fatalError("not one line: \(line.debugDescription)") }
    }
    let file: IGVMFile
    do { file = try IGVMFile(bytes: bytes) } catch {
        oneLine(error)
        return 0
    }
    for (nativeZero, checkKVM) in [(false, true), (true, false)] {
        do { _ = try IGVMSNPLaunch(file, nativeZero: nativeZero, checkKVM: checkKVM).launchDigest } catch { oneLine(error) }
    }
    return 0
}
