/// An SEV-SNP page type as the firmware's PAGE_INFO carries it (SEV-SNP
/// firmware ABI, PAGE_INFO structure, PAGE_TYPE field).
public struct SNPPageType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let normal = SNPPageType(rawValue: 1)
    public static let vmsa = SNPPageType(rawValue: 2)
    public static let zero = SNPPageType(rawValue: 3)
    public static let unmeasured = SNPPageType(rawValue: 4)
    public static let secrets = SNPPageType(rawValue: 5)
    public static let cpuid = SNPPageType(rawValue: 6)

    public var description: String {
        switch self {
        case .normal: "NORMAL"
        case .vmsa: "VMSA"
        case .zero: "ZERO"
        case .unmeasured: "UNMEASURED"
        case .secrets: "SECRETS"
        case .cpuid: "CPUID"
        default: "type \(rawValue)"
        }
    }
}

/// A segment register as the VMSA stores it (`struct vmcb_seg`).
public struct VMSASegment: Sendable, Equatable {
    public var selector: UInt16
    /// The descriptor's type, S, DPL, P, AVL, L, D/B and G bits, packed in that order from bit 0.
    public var attributes: UInt16
    public var limit: UInt32
    public var base: UInt64

    public init(selector: UInt16 = 0, attributes: UInt16 = 0, limit: UInt32 = 0, base: UInt64 = 0) {
        self.selector = selector
        self.attributes = attributes
        self.limit = limit
        self.base = base
    }
}

/// The SEV-ES/SNP VM save area (VMSA) of a vCPU: the page KVM fills from the
/// vCPU's registers at launch finish and the firmware measures as a VMSA page.
///
/// Layout: `struct sev_es_save_area` (arch/x86/include/asm/svm.h), which
/// follows the AMD APM vol. 2, appendix B, "VMSA layout, state save area".
/// Fields not listed here stay zero. The defaults are the reset values of
/// the registers KVM's register ioctls do not carry.
public struct SNPVMSA: Sendable, Equatable {
    public var es = VMSASegment(), cs = VMSASegment(), ss = VMSASegment(), ds = VMSASegment()
    public var fs = VMSASegment(), gs = VMSASegment(), ldtr = VMSASegment(), tr = VMSASegment()
    /// GDTR and IDTR: only limit and base are stored.
    public var gdtr = VMSASegment(), idtr = VMSASegment()
    public var efer: UInt64 = 0, cr0: UInt64 = 0, cr2: UInt64 = 0, cr3: UInt64 = 0, cr4: UInt64 = 0
    public var dr6: UInt64 = 0xFFFF_0FF0, dr7: UInt64 = 0x400
    public var rflags: UInt64 = 0, rip: UInt64 = 0
    public var rax: UInt64 = 0, rbx: UInt64 = 0, rcx: UInt64 = 0, rdx: UInt64 = 0
    public var rsp: UInt64 = 0, rbp: UInt64 = 0, rsi: UInt64 = 0, rdi: UInt64 = 0
    /// r8 to r15.
    public var r8to15 = [UInt64](repeating: 0, count: 8)
    /// `sev_features`, from KVM_SEV_INIT2's `vmsa_features`.
    public var sevFeatures: UInt64 = 0
    public var xcr0: UInt64 = 1
    public var pat: UInt64 = 0x0007_0406_0007_0406
    public var mxcsr: UInt32 = 0x1F80
    public var x87ControlWord: UInt16 = 0x37F

    public init() {}

    /// Byte offsets in the save area (APM vol. 2 table B-4).
    public enum Offset {
        public static let es = 0x000, cs = 0x010, ss = 0x020, ds = 0x030, fs = 0x040, gs = 0x050
        public static let gdtr = 0x060, ldtr = 0x070, idtr = 0x080, tr = 0x090
        public static let efer = 0x0D0, cr4 = 0x148, cr3 = 0x150, cr0 = 0x158, dr7 = 0x160, dr6 = 0x168
        public static let rflags = 0x170, rip = 0x178, rsp = 0x1D8, rax = 0x1F8, cr2 = 0x240, gPAT = 0x268
        public static let rcx = 0x308, rdx = 0x310, rbx = 0x318, rbp = 0x328, rsi = 0x330, rdi = 0x338, r8 = 0x340
        public static let sevFeatures = 0x3B0, xcr0 = 0x3E8, mxcsr = 0x408, x87FCW = 0x410
    }

    /// The 4096-byte page.
    public var page: [UInt8] {
        var page = [UInt8](repeating: 0, count: 4096)
        page.withUnsafeMutableBytes { raw in
            func put<T>(_ value: T, _ offset: Int) { raw.storeBytes(of: value, toByteOffset: offset, as: T.self) }
            func segment(_ segment: VMSASegment, _ offset: Int) {
                put(segment.selector, offset)
                put(segment.attributes, offset + 2)
                put(segment.limit, offset + 4)
                put(segment.base, offset + 8)
            }
            for (value, offset) in [(es, Offset.es), (cs, Offset.cs), (ss, Offset.ss), (ds, Offset.ds), (fs, Offset.fs),
                                    (gs, Offset.gs), (ldtr, Offset.ldtr), (tr, Offset.tr)] {
                segment(value, offset)
            }
            for (table, offset) in [(gdtr, Offset.gdtr), (idtr, Offset.idtr)] {
                put(table.limit, offset + 4)
                put(table.base, offset + 8)
            }
            for (value, offset) in [(efer, Offset.efer), (cr4, Offset.cr4), (cr3, Offset.cr3), (cr0, Offset.cr0),
                                    (cr2, Offset.cr2), (dr7, Offset.dr7), (dr6, Offset.dr6), (rflags, Offset.rflags),
                                    (rip, Offset.rip), (rsp, Offset.rsp), (rax, Offset.rax), (pat, Offset.gPAT),
                                    (rcx, Offset.rcx), (rdx, Offset.rdx), (rbx, Offset.rbx), (rbp, Offset.rbp),
                                    (rsi, Offset.rsi), (rdi, Offset.rdi), (sevFeatures, Offset.sevFeatures),
                                    (xcr0, Offset.xcr0)] {
                put(value, offset)
            }
            for (index, value) in r8to15.prefix(8).enumerated() { put(value, Offset.r8 + 8 * index) }
            put(mxcsr, Offset.mxcsr)
            put(x87ControlWord, Offset.x87FCW)
        }
        return page
    }
}

/// One SNP launch-digest step (SNP firmware ABI, PAGE_INFO structure):
/// `LD' = SHA-384(PAGE_INFO)`, where PAGE_INFO holds the current digest, the
/// page's SHA-384 for NORMAL and VMSA pages (zeros for the other types), the
/// structure's length 0x70, the page type and the GPA.
public func snpPageInfoDigest(current: SHA384Digest, contentsHash: SHA384Digest?, type: SNPPageType,
                              gpa: UInt64) -> SHA384Digest {
    snpPageInfoDigest(current: current, contentsHash: contentsHash, type: type, gpa: gpa) { SHA384.hash($0) }
}

private func snpPageInfoDigest(current: SHA384Digest, contentsHash: SHA384Digest?, type: SNPPageType, gpa: UInt64,
                               hash: (UnsafeRawBufferPointer) -> SHA384Digest) -> SHA384Digest {
    withUnsafeTemporaryAllocation(byteCount: 0x70, alignment: 8) { info in
        info.initializeMemory(as: UInt8.self, repeating: 0)
        current.bytes.withUnsafeBytes { info.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: 48) }
        contentsHash?.bytes.withUnsafeBytes { (info.baseAddress! + 0x30).copyMemory(from: $0.baseAddress!, byteCount: 48) }
        info[0x60] = 0x70
        info[0x62] = type.rawValue
        info.storeBytes(of: gpa.littleEndian, toByteOffset: 0x68, as: UInt64.self)
        return hash(UnsafeRawBufferPointer(info))
    }
}
