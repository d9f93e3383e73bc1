import CKVMHeaders

/// One memslot of `KVM_SET_USER_MEMORY_REGION2`.
public struct UserMemoryRegion2: Hashable, Sendable {
    /// Address-space id in bits 31:16 (x86: 0 normal, 1 SMM), slot id in bits 15:0.
    public var slot: UInt32
    /// `KVM_MEM_*` flags; `guestMemfd` below sets `KVM_MEM_GUEST_MEMFD`.
    public var flags: UInt32
    public var guestPhysicalAddress: UInt64
    /// The slot's size in bytes; 0 deletes the slot.
    public var memorySize: UInt64
    /// Host address backing shared accesses; unused (may be 0) for a slot
    /// bound to a guest_memfd made with `GUEST_MEMFD_FLAG_MMAP`.
    public var userspaceAddress: UInt64
    public var guestMemfdOffset: UInt64
    public var guestMemfd: UInt32

    /// `KVM_MEM_LOG_DIRTY_PAGES`.
    public static let logDirtyPages = UInt32(CKVM_MEM_LOG_DIRTY_PAGES)
    /// `KVM_MEM_READONLY`.
    public static let readOnly = UInt32(CKVM_MEM_READONLY)
    /// `KVM_MEM_GUEST_MEMFD`.
    public static let guestMemfdFlag = UInt32(CKVM_MEM_GUEST_MEMFD)

    public init(
        slot: UInt32, flags: UInt32 = 0, guestPhysicalAddress: UInt64, memorySize: UInt64,
        userspaceAddress: UInt64 = 0, guestMemfdOffset: UInt64 = 0, guestMemfd: UInt32 = 0
    ) {
        self.slot = slot
        self.flags = flags
        self.guestPhysicalAddress = guestPhysicalAddress
        self.memorySize = memorySize
        self.userspaceAddress = userspaceAddress
        self.guestMemfdOffset = guestMemfdOffset
        self.guestMemfd = guestMemfd
    }

    /// A slot whose memory, shared and private, comes from `memfd` at `offset`.
    public init(slot: UInt32, guestPhysicalAddress: UInt64, size: UInt64, memfd: GuestMemfd, offset: UInt64 = 0,
                userspaceAddress: UInt64 = 0) {
        self.init(slot: slot, flags: UserMemoryRegion2.guestMemfdFlag, guestPhysicalAddress: guestPhysicalAddress,
                  memorySize: size, userspaceAddress: userspaceAddress, guestMemfdOffset: offset,
                  guestMemfd: UInt32(bitPattern: memfd.fd))
    }

    /// A slot whose memory comes from the guest_memfd behind `mapping`, at
    /// file offset `offset`, naming the mapping as `userspace_addr` as well.
    ///
    /// KVM does not need the address to map guest_memfd memory into the
    /// guest, but its instruction emulator reads guest memory through it,
    /// and on hosts without hardware-assisted paging the emulator runs all
    /// guest kernel-mode code.
    public init(slot: UInt32, guestPhysicalAddress: UInt64, mapping: GuestMemoryMapping, offset: UInt64 = 0,
                size: UInt64? = nil) {
        let size = size ?? (UInt64(mapping.length) - offset)
        self.init(slot: slot, guestPhysicalAddress: guestPhysicalAddress, size: size, memfd: mapping.memfd,
                  offset: offset, userspaceAddress: mapping.userspaceAddress + offset)
    }

    var range: GuestRange { GuestRange(start: guestPhysicalAddress, size: memorySize) }

    /// The C struct the ioctl takes, for callers that set fields this type
    /// does not carry (the unchecked pads).
    public var cValue: ckvm_userspace_memory_region2 {
        var region = ckvm_userspace_memory_region2()
        region.slot = slot
        region.flags = flags
        region.guest_phys_addr = guestPhysicalAddress
        region.memory_size = memorySize
        region.userspace_addr = userspaceAddress
        region.guest_memfd_offset = guestMemfdOffset
        region.guest_memfd = guestMemfd
        return region
    }
}

/// A virtual machine: the owner of memslots, memory attributes, vCPUs and
/// guest_memfd files.
///
/// The corresponding descriptor is the one `KVM_CREATE_VM` returns; it is
/// closed when the object is released. vCPUs and guest_memfds keep their VM
/// alive.
public final class VM: KernelObject, Sendable {
    public let kvm: KVM
    public let type: VMType
    /// The raw descriptor, for embedding VMMs; closed on release unless it was adopted as borrowed.
    public let fd: CInt
    public var kernel: any KernelInterface { kvm.kernel }
    var objectKind: KVMObjectKind { .vm }

    private let ownsDescriptor: Bool

    init(kvm: KVM, type: VMType, fd: CInt) {
        self.kvm = kvm
        self.type = type
        self.fd = fd
        ownsDescriptor = true
    }

    /// Wraps a VM descriptor the caller created (`KVM_CREATE_VM` with `type`).
    /// It is closed on release only with `.owned`.
    public init(adopting fd: CInt, type: VMType, kvm: KVM, ownership: DescriptorOwnership) {
        self.kvm = kvm
        self.type = type
        self.fd = fd
        ownsDescriptor = ownership == .owned
    }

    deinit { if ownsDescriptor { try? kernel.close(fd) } }

    /// Asks about a capability as it applies to this VM; guest_memfd flags
    /// and memory attributes depend on the VM type.
    ///
    /// The corresponding ioctl is `KVM_CHECK_EXTENSION` (VM ioctl).
    /// Unmerged capabilities read as the system's do (`KVM.checkExtension`).
    public func checkExtension(_ capability: Capability) throws(KVMError) -> Int {
        try kvm.experimental.filter(capability) { () throws(KVMError) in
            try call(.checkExtension, UInt(capability.rawValue), detail: capability.name)
        }
    }

    /// Creates the vCPU with this id and maps its `kvm_run` area.
    ///
    /// The corresponding ioctl is `KVM_CREATE_VCPU` (VM ioctl).
    /// - Throws: EEXIST for an id already in use, EINVAL for an id beyond the host's limit.
    public func createVCPU(id: UInt32) throws(KVMError) -> VCPU {
        let runSize = try kvm.getVCPUMmapSize()
        let fd = CInt(try call(.createVCPU, UInt(id), detail: "vCPU id \(id)"))
        let run: UnsafeMutableRawPointer
        do {
            run = try kernel.mmap(length: runSize, protection: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd: fd, offset: 0)
        } catch {
            try? kernel.close(fd)
            throw KVMError(.syscall(.mmap), on: .vcpu, fd: fd, errno: error, detail: "kvm_run, \(runSize) bytes")
        }
        return VCPU(vm: self, id: id, fd: fd, run: run, runSize: runSize, ownsDescriptor: true)
    }

    /// Wraps a vCPU descriptor the caller created (`KVM_CREATE_VCPU` with
    /// `id`), mapping its `kvm_run` area once more for this object. The
    /// mapping is always released with the object; the descriptor only with `.owned`.
    public func adoptVCPU(fd: CInt, id: UInt32, ownership: DescriptorOwnership) throws(KVMError) -> VCPU {
        let runSize = try kvm.getVCPUMmapSize()
        let run: UnsafeMutableRawPointer
        do {
            run = try kernel.mmap(length: runSize, protection: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd: fd, offset: 0)
        } catch {
            throw KVMError(.syscall(.mmap), on: .vcpu, fd: fd, errno: error, detail: "kvm_run, \(runSize) bytes")
        }
        return VCPU(vm: self, id: id, fd: fd, run: run, runSize: runSize, ownsDescriptor: ownership == .owned)
    }

    /// Wraps a guest_memfd the caller created on this VM with `size` and `flags`.
    /// It is closed on release only with `.owned`.
    public func adoptGuestMemfd(fd: CInt, size: UInt64, flags: GuestMemfdFlags, ownership: DescriptorOwnership) -> GuestMemfd {
        GuestMemfd(vm: self, fd: fd, size: size, flags: flags, ownsDescriptor: ownership == .owned)
    }

    /// Creates a guest_memfd of `size` bytes bound to this VM.
    ///
    /// The corresponding ioctl is `KVM_CREATE_GUEST_MEMFD` (VM ioctl).
    /// - Throws: EINVAL for a flag outside `KVM_CAP_GUEST_MEMFD_FLAGS`, or a
    ///   size that is zero, negative as a signed value, or not page aligned.
    public func createGuestMemfd(size: UInt64, flags: GuestMemfdFlags = []) throws(KVMError) -> GuestMemfd {
        if flags.contains(.hugetlb), !kvm.experimental.contains(.hugeTLBGuestMemfd) {
            throw .notOptedIn(.ioctl(.createGuestMemfd), on: .vm, fd: fd, .hugeTLBGuestMemfd)
        }
        var request = ckvm_create_guest_memfd()
        request.size = size
        request.flags = flags.rawValue
        let fd = try call(.createGuestMemfd, pointerTo: &request, detail: "size \(hex(size)), flags \(flags)")
        return GuestMemfd(vm: self, fd: CInt(fd), size: size, flags: flags)
    }

    /// Creates, or with `memorySize` 0 deletes, a memslot.
    ///
    /// The corresponding ioctl is `KVM_SET_USER_MEMORY_REGION2` (VM ioctl).
    /// - Throws: EEXIST when the GPA range overlaps another slot; EINVAL for
    ///   unaligned addresses, a guest_memfd range past the file's end or
    ///   already bound, a guest_memfd of another VM, or a change to an
    ///   existing guest_memfd slot; EBADF for a guest_memfd that is not open.
    public func setUserMemoryRegion2(_ region: UserMemoryRegion2) throws(KVMError) {
        var value = region.cValue
        try call(.setUserMemoryRegion2, pointerTo: &value, range: region.range,
                 detail: "slot \(region.slot), flags \(hex(region.flags)), guest_memfd offset \(hex(region.guestMemfdOffset))")
    }

    /// Creates, or with `memorySize` 0 deletes, a memslot backed by host memory only.
    ///
    /// The corresponding ioctl is `KVM_SET_USER_MEMORY_REGION` (VM ioctl).
    public func setUserMemoryRegion(slot: UInt32, flags: UInt32 = 0, guestPhysicalAddress: UInt64,
                                    memorySize: UInt64, userspaceAddress: UInt64) throws(KVMError) {
        var value = kvm_userspace_memory_region(slot: slot, flags: flags, guest_phys_addr: guestPhysicalAddress,
                                                memory_size: memorySize, userspace_addr: userspaceAddress)
        try call(.setUserMemoryRegion, pointerTo: &value,
                 range: GuestRange(start: guestPhysicalAddress, size: memorySize), detail: "slot \(slot)")
    }

    /// Sets the attributes of every page in `range`, all or nothing.
    ///
    /// The kernel applies the whole range or none of it and writes nothing
    /// back, so there is no progress to resume from.
    ///
    /// The corresponding ioctl is `KVM_SET_MEMORY_ATTRIBUTES` (VM ioctl).
    /// - Throws: ENOTTY where the kernel lacks memory attributes; EINVAL for
    ///   an attribute this VM type does not support (PRIVATE on a default
    ///   VM), an empty, wrapping or unaligned range; ENOMEM.
    public func setMemoryAttributes(_ range: GuestRange, attributes: MemoryAttributes) throws(KVMError) {
        var value = ckvm_memory_attributes(address: range.start.rawValue, size: range.size,
                                           attributes: attributes.rawValue, flags: 0)
        try call(.setMemoryAttributes, pointerTo: &value, range: range, detail: "attributes \(attributes)")
    }

    /// Enables a capability on this VM with up to four arguments.
    ///
    /// The corresponding ioctl is `KVM_ENABLE_CAP` (VM ioctl).
    public func enableCap(_ capability: Capability, arguments: [UInt64] = []) throws(KVMError) {
        var value = kvm_enable_cap()
        value.cap = capability.rawValue
        withUnsafeMutableBytes(of: &value.args) { raw in
            for (index, argument) in arguments.prefix(4).enumerated() {
                raw.storeBytes(of: argument, toByteOffset: index * 8, as: UInt64.self)
            }
        }
        try call(.enableCap, pointerTo: &value, detail: capability.name)
    }

    /// Sets how many shadow-MMU pages the VM may use (at least 64).
    ///
    /// The corresponding ioctl is `KVM_SET_NR_MMU_PAGES` (VM ioctl, x86).
    public func setNrMMUPages(_ pages: UInt) throws(KVMError) {
        try call(.setNrMMUPages, pages, detail: "\(pages) pages")
    }

    /// Sets the address of the three-page TSS region Intel VMX needs below 4 GiB.
    ///
    /// The corresponding ioctl is `KVM_SET_TSS_ADDR` (VM ioctl).
    public func setTSSAddr(_ address: UInt64) throws(KVMError) {
        try call(.setTSSAddr, UInt(address), detail: "address \(hex(address))")
    }

    /// Sets the address of the identity-map page Intel VMX uses for real mode.
    ///
    /// The corresponding ioctl is `KVM_SET_IDENTITY_MAP_ADDR` (VM ioctl).
    public func setIdentityMapAddr(_ address: UInt64) throws(KVMError) {
        var value = address
        try call(.setIdentityMapAddr, pointerTo: &value, detail: "address \(hex(address))")
    }

    /// Creates the in-kernel PIC, IOAPIC and local APICs.
    ///
    /// The corresponding ioctl is `KVM_CREATE_IRQCHIP` (VM ioctl).
    public func createIRQChip() throws(KVMError) {
        try call(.createIRQChip)
    }

    /// Creates the in-kernel i8254 PIT.
    ///
    /// The corresponding ioctl is `KVM_CREATE_PIT2` (VM ioctl).
    public func createPIT2() throws(KVMError) {
        var config = kvm_pit_config()
        try call(.createPIT2, pointerTo: &config)
    }

    /// Raises or lowers an interrupt line of the in-kernel irqchip.
    ///
    /// The corresponding ioctl is `KVM_IRQ_LINE` (VM ioctl).
    public func irqLine(_ irq: UInt32, level: Bool) throws(KVMError) {
        var value = kvm_irq_level()
        value.irq = irq
        value.level = level ? 1 : 0
        try call(.irqLine, pointerTo: &value, detail: "irq \(irq)")
    }

    /// Issues one `KVM_MEMORY_ENCRYPT_OP` sub-command whose framing struct
    /// (`kvm_sev_cmd` or `kvm_tdx_cmd`) is at `command`. The platform types
    /// (`SEVSNP`, `TDX`) build the framing and read the firmware status back.
    ///
    /// The corresponding ioctl is `KVM_MEMORY_ENCRYPT_OP` (VM ioctl).
    /// - Throws: ENOTTY where the VM type has no such platform.
    func memoryEncryptOp(_ command: UnsafeMutableRawPointer) throws(Errno) {
        _ = try kernel.ioctl(fd, Ioctl.memoryEncryptOp.request, UInt(bitPattern: command))
    }
}
