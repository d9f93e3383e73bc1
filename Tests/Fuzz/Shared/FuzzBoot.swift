// The check the loader fuzz targets share (elf-pvh, bzimage): compiled
// into each of them through its `sources` file by scripts/fuzz.
import GuestMemfd
import LaunchMeasurement
import Populate
import VMMCore

enum FuzzBoot {
    /// Guest RAM for the layout: small, so that images can run off its end.
    static let memorySize: UInt64 = 64 << 20
    static let initrd = ImageSource(bytes: [UInt8](repeating: 0x5A, count: 4096))

    /// Runs `load` on `bytes` as the kernel; any result but a validated
    /// plan or a one-line `ImageError` stops the fuzzer.
    static func check(_ bytes: [UInt8], _ load: (BootRequest) throws(ImageError) -> BootSetup) {
        do {
            let setup = try load(BootRequest(kernel: ImageSource(bytes: bytes), initrd: initrd,
                                             commandLine: "console=ttyS0", memorySize: memorySize))
            let ram = Layout.ramRanges(memorySize: memorySize).map { GuestRange(start: $0.start, size: $0.size) }
            do { try setup.plan.validate(memory: ram) } catch { fatalError("the loader returned an invalid plan: \(error)") }
        } catch {
            let line = error.description
            if line.isEmpty || line.contains("\n") { fatalError("not one line: \(line.debugDescription)") }
        }
    }
}
