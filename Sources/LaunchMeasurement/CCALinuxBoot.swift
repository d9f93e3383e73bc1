/// A realm that boots an arm64 Linux kernel directly: Image, optional
/// initrd and a DTB loaded into RAM, and one runnable REC entering the
/// kernel with x0 = the DTB address.
///
/// The layout follows QEMU's `virt` machine direct kernel boot
/// (`hw/arm/boot.c` `arm_load_kernel`), as the Realm VM specification of
/// veraison/cca-realm-measurements (`docs/realm-vm.md`, "QEMU virt") fixes it:
/// - the kernel at the RAM base plus the Image header's text_offset;
/// - the initrd after the kernel, no lower than RAM base + min(RAM / 2,
///   128 MiB), 4 KiB aligned;
/// - the DTB after the initrd, 2 MiB aligned.
///
/// The measurement is the RMM v2.0 sequence: REALM_CREATE, measured
/// DATA_CREATE of every granule of the three blobs in ascending IPA order,
/// then REC_CREATE of the boot vCPU.
public struct CCALinuxBoot: Sendable {
    public var parameters: CCARealmParameters
    public var ramBase: UInt64
    public var ramSize: UInt64
    public var kernel: [UInt8]
    public var initrd: [UInt8]?
    public var dtb: [UInt8]

    /// QEMU virt's RAM base.
    public static let defaultRAMBase: UInt64 = 0x4000_0000

    public init(parameters: CCARealmParameters, ramBase: UInt64 = defaultRAMBase, ramSize: UInt64,
                kernel: [UInt8], initrd: [UInt8]?, dtb: [UInt8]) {
        self.parameters = parameters
        self.ramBase = ramBase
        self.ramSize = ramSize
        self.kernel = kernel
        self.initrd = initrd
        self.dtb = dtb
    }

    /// Where each blob goes.
    public struct Layout: Equatable, Sendable {
        public var kernel: UInt64
        public var initrd: UInt64?
        public var dtb: UInt64
    }

    /// The addresses of the blobs, checked against RAM.
    /// - Throws: `CCABootError` for a file that is not an arm64 Image or blobs that do not fit in RAM.
    public func layout() throws(CCABootError) -> Layout {
        // arm64 Image header (Documentation/arch/arm64/booting.rst): text_offset
        // (u64 at 8), image_size (u64 at 16), magic "ARM\x64" at 0x38.
        guard kernel.count >= 64, kernel.loadLE(UInt32.self, at: 0x38) == 0x644D_5241 else { throw .notAnImage }
        let textOffset = kernel.loadLE(UInt64.self, at: 8)
        let imageSize = kernel.loadLE(UInt64.self, at: 16)
        let kernelSize = imageSize != 0 ? max(imageSize, UInt64(kernel.count)) : UInt64(kernel.count)
        guard ramSize % 4096 == 0, ramBase % 4096 == 0, !ramBase.addingReportingOverflow(ramSize).overflow else {
            throw .badRAM(base: ramBase, size: ramSize)
        }
        let ramEnd = ramBase + ramSize
        let kernelStart = ramBase &+ textOffset
        guard textOffset % 4096 == 0, kernelStart >= ramBase, kernelSize <= ramEnd &- kernelStart, kernelStart < ramEnd else {
            throw .doesNotFit(blob: "kernel", start: kernelStart, size: kernelSize, ramEnd: ramEnd)
        }
        var initrdStart = max(ramBase + min(ramSize / 2, 128 << 20), kernelStart + kernelSize)
        initrdStart = (initrdStart + 0xFFF) & ~0xFFF
        let initrdSize = UInt64(initrd?.count ?? 0)
        guard initrdStart <= ramEnd, initrdSize <= ramEnd - initrdStart else {
            throw .doesNotFit(blob: "initrd", start: initrdStart, size: initrdSize, ramEnd: ramEnd)
        }
        let dtbStart = (initrdStart + initrdSize + 0x1F_FFFF) & ~0x1F_FFFF
        guard dtbStart <= ramEnd, UInt64(dtb.count) <= ramEnd - dtbStart else {
            throw .doesNotFit(blob: "DTB", start: dtbStart, size: UInt64(dtb.count), ramEnd: ramEnd)
        }
        return Layout(kernel: kernelStart, initrd: initrd == nil ? nil : initrdStart, dtb: dtbStart)
    }

    /// The realm initial measurement of this boot.
    public func realmInitialMeasurement() throws(CCABootError) -> [UInt8] {
        let layout = try layout()
        var measurement = CCARealmMeasurement(parameters: parameters)
        measurement.dataCreate(loading: kernel, at: layout.kernel)
        if let initrd, let at = layout.initrd { measurement.dataCreate(loading: initrd, at: at) }
        measurement.dataCreate(loading: dtb, at: layout.dtb)
        measurement.recCreate(pc: layout.kernel, gprs: [layout.dtb, 0, 0, 0, 0, 0, 0, 0], runnable: true)
        return measurement.rim
    }
}

/// Why a CCA direct-boot plan cannot be measured.
public enum CCABootError: Error, Equatable, Sendable, CustomStringConvertible {
    case notAnImage
    case badRAM(base: UInt64, size: UInt64)
    case doesNotFit(blob: String, start: UInt64, size: UInt64, ramEnd: UInt64)

    public var description: String {
        switch self {
        case .notAnImage: return "the kernel is not an arm64 Linux Image (no \"ARM\\x64\" magic at offset 0x38)"
        case .badRAM(let base, let size): return "RAM [\(Hex.number(base)), +\(Hex.number(size))) is not 4 KiB aligned or wraps"
        case .doesNotFit(let blob, let start, let size, let ramEnd):
            return "the \(blob) (\(size) bytes at \(Hex.number(start))) does not fit in RAM ending at \(Hex.number(ramEnd))"
        }
    }
}
