import GuestMemfd
import CKVMHeaders
#if canImport(Glibc)
import Glibc
#endif

/// A KVM that lives in this process and implements the same kernel seam as
/// `LinuxKernel`, following the kernel's and the platform firmware's rules.
///
/// Open it with `KVM.open(using: FakeKVM(profile: .snpHost))` and every
/// typed object above runs unchanged: ioctls are decoded from the same C
/// structs, checked in the kernel's order, answered with the kernel's errno,
/// and partial progress is written back into the caller's struct as the
/// kernel writes it. guest_memfd bytes live in real memfds, so in-place
/// writes, punched holes and SIGBUS past the end are real. Each rule names
/// the kernel function or specification section it follows.
///
/// What the fake cannot do is execute guest instructions: a vCPU runs a
/// script of `FakeGuestStep`s instead (see `program(_:steps:)`).
public final class FakeKVM: KernelInterface, @unchecked Sendable {
    public let profile: HostProfile

    private let mutex = FakeMutex()
    private var files: [CInt: FakeFile] = [:]
    private var nextFD: CInt = 1000
    private var nextObjectID = 1
    private var mappings: [FakeMapping] = []
    var host: HostMemory
    var rmp = RMPTable()
    /// Live guest_memfd files by id, for finding a frame's owner.
    var guestMemfds: [Int: FakeGuestMemfd] = [:]
    var nextASID: UInt32 = 1
    private var pendingSignals: [PendingSignal] = []

    enum FakeFile {
        case system
        case vm(FakeVM)
        case vcpu(FakeVCPU)
        case guestMemfd(FakeGuestMemfd)
        case sevDevice

        /// The VM the file refers to, if any.
        var vm: FakeVM? {
            switch self {
            case .vm(let vm): vm
            case .vcpu(let vcpu): vcpu.vm
            case .guestMemfd(let gmem): gmem.vm
            case .system, .sevDevice: nil
            }
        }
    }

    struct FakeMapping {
        enum Target {
            case guestMemfd(FakeGuestMemfd, offset: UInt64)
            case vcpu(FakeVCPU)

            var vm: FakeVM {
                switch self {
                case .guestMemfd(let gmem, _): gmem.vm
                case .vcpu(let vcpu): vcpu.vm
                }
            }
        }
        let base: UInt
        let length: Int
        let target: Target
        /// The protection the caller asked for, which shared pages keep.
        var protection: CInt = PROT_READ | PROT_WRITE

        var isGuestMemfd: Bool {
            if case .guestMemfd = target { return true }
            return false
        }
    }

    /// A signal (or any errno) that arrives after a number of pages of
    /// page-by-page work, where the kernel checks `signal_pending()`.
    struct PendingSignal {
        var errno: Errno
        var pagesLeft: Int
        var ioctl: Ioctl?
        /// Fails every page from then on instead of once.
        var persistent = false
    }

    public init(profile: HostProfile = .thisMachine) {
        self.profile = profile
        host = HostMemory(bytes: profile.hostMemory)
        if let rmpopt = profile.snp?.rmpopt {
            // The series optimises all of memory once SNP is initialised.
            let regions = Int((profile.hostMemory + (1 << 30) - 1) >> 30)
            rmp.rmpopt = RMPOPTTable(cpus: rmpopt.cpus, hostRegions: regions)
            rmp.optimizeAll()
        }
    }

    // MARK: KernelInterface

    public func open(_ path: String, flags: CInt) throws(Errno) -> CInt {
        try mutex.withLock { () throws(Errno) -> CInt in
            switch path {
            case "/dev/kvm": return install(.system)
            case "/dev/sev" where profile.snp != nil: return install(.sevDevice)
            default: throw .noSuchFileOrDirectory
            }
        }
    }

    public func close(_ fd: CInt) throws(Errno) {
        try mutex.withLock { () throws(Errno) in
            guard let file = files.removeValue(forKey: fd) else { throw .badFileDescriptor }
            switch file {
            case .guestMemfd(let gmem): dropReference(gmem)
            case .vm(let vm): dropReference(vm)
            case .vcpu(let vcpu): dropReference(vcpu.vm)
            case .system, .sevDevice: break
            }
        }
    }

    deinit {
        // The process holding the fds is gone: every VM is destroyed.
        for vm in files.values.compactMap(\.vm) + mappings.map(\.target.vm) { vm.destroy() }
    }

    public func ioctl(_ fd: CInt, _ request: UInt, _ argument: UInt) throws(Errno) -> Int {
        try mutex.withLock { () throws(Errno) -> Int in
            guard let file = files[fd] else { throw .badFileDescriptor }
            switch file {
            case .system: return try systemIoctl(request, argument)
            case .vm(let vm): return try vmIoctl(vm, request, argument)
            case .vcpu(let vcpu): return try vcpuIoctl(vcpu, request, argument)
            case .guestMemfd(let gmem) where profile.inPlaceConversion && request == Ioctl.setMemoryAttributes2.request:
                try setMemoryAttributes2(gmem, argument)
                return 0
            // guest_memfd (without in-place conversion) and /dev/sev have no ioctl handler.
            case .guestMemfd, .sevDevice: throw .notTTY
            }
        }
    }

    public func mmap(address: UnsafeMutableRawPointer?, length: Int, protection: CInt, flags: CInt, fd: CInt,
                     offset: Int) throws(Errno) -> UnsafeMutableRawPointer
    {
        try mutex.withLock { () throws(Errno) -> UnsafeMutableRawPointer in
            guard let file = files[fd] else { throw .badFileDescriptor }
            guard length > 0, offset >= 0, offset % Int(pageSize) == 0 else { throw .invalidArgument }
            switch file {
            case .guestMemfd(let gmem):
                // kvm_gmem_mmap: only with GUEST_MEMFD_FLAG_MMAP, and only shared mappings.
                guard gmem.flags.contains(.mmap) else { throw .noSuchDevice }
                guard flags & MAP_SHARED != 0 else { throw .invalidArgument }
                let base = try realMap(address, length, protection, flags, gmem.backing, offset)
                gmem.references += 1
                let mapping = FakeMapping(base: UInt(bitPattern: base), length: length,
                                          target: .guestMemfd(gmem, offset: UInt64(offset)), protection: protection)
                mappings.append(mapping)
                withholdPrivatePages(of: gmem, in: mapping)
                return base
            case .vcpu(let vcpu):
                // kvm_vcpu_mmap: the kvm_run area and the pages after it.
                let base = try realMap(address, length, protection, flags, vcpu.runFD, offset)
                mappings.append(FakeMapping(base: UInt(bitPattern: base), length: length, target: .vcpu(vcpu)))
                return base
            case .system, .vm, .sevDevice:
                throw .noSuchDevice
            }
        }
    }

    public func munmap(_ address: UnsafeMutableRawPointer, length: Int) throws(Errno) {
        try mutex.withLock { () throws(Errno) in
            if Glibc.munmap(address, length) != 0 { throw Errno(rawValue: errno) }
            let base = UInt(bitPattern: address)
            if let index = mappings.firstIndex(where: { $0.base == base && $0.length == length }) {
                let mapping = mappings.remove(at: index)
                if case .guestMemfd(let gmem, _) = mapping.target { dropReference(gmem) }
            }
        }
    }

    public func madvise(_ address: UnsafeMutableRawPointer, length: Int, advice: CInt) throws(Errno) {
        try mutex.withLock { () throws(Errno) in
            let start = UInt(bitPattern: address)
            let inGuestMemfd = mappings.contains { start >= $0.base && start < $0.base + UInt($0.length) && $0.isGuestMemfd }
            // MADV_COLLAPSE (25): madvise_collapse finds no huge-page order a
            // guest_memfd VMA allows (thp_vma_allowable_order) and fails with EINVAL.
            if advice == 25, inGuestMemfd { throw .invalidArgument }
            if advice == CKVM_MADV_POPULATE_WRITE || advice == CKVM_MADV_POPULATE_READ,
               let mapping = mappings.first(where: { start >= $0.base && start < $0.base + UInt($0.length) }),
               case .guestMemfd(let gmem, let fileOffset) = mapping.target
            {
                // MADV_POPULATE_* fault every page in; where the fault handler
                // would raise SIGBUS (kvm_gmem_fault_user_mapping: past the end
                // of the file, or a page that is not shared) they fail with EFAULT.
                let first = fileOffset + UInt64(start - mapping.base) / pageSize * pageSize
                let end = first + (UInt64(length) + pageSize - 1) / pageSize * pageSize
                let inFile = Int(first / pageSize)..<Int(min(end, max(gmem.size, first)) / pageSize)
                // Pages are faulted in order up to the first that raises SIGBUS.
                let stop = gmem.stretches(inFile, where: { !$0.shared }).first?.lowerBound ?? inFile.upperBound
                gmem.allocate(inFile.lowerBound..<stop, &host)
                if stop < inFile.upperBound || end > gmem.size { throw .badAddress }
            }
            if Glibc.madvise(address, length, advice) != 0 { throw Errno(rawValue: errno) }
        }
    }

    /// fstat on the fake's files: a guest_memfd reports its size and a
    /// page-sized block (kvm_gmem_getattr's generic_fillattr on an inode of
    /// i_size bytes; guest_memfd_test, test_file_size); the other anonymous
    /// inodes (/dev/kvm's, a VM's, a vCPU's) have none.
    public func fstat(_ fd: CInt) throws(Errno) -> FileStatus {
        try mutex.withLock { () throws(Errno) -> FileStatus in
            guard let file = files[fd] else { throw .badFileDescriptor }
            if case .guestMemfd(let gmem) = file { return FileStatus(size: Int(gmem.size), blockSize: Int(pageSize)) }
            return FileStatus(size: 0, blockSize: Int(pageSize))
        }
    }

    /// read and write: guest_memfd, like KVM's other anonymous-inode files,
    /// has no read or write operation, so the file is neither FMODE_CAN_READ
    /// nor FMODE_CAN_WRITE and vfs_read/vfs_write answer EINVAL; pread and
    /// pwrite stop earlier, at the missing FMODE_PREAD/FMODE_PWRITE
    /// (ksys_pread64, ksys_pwrite64: ESPIPE). guest_memfd_test,
    /// test_file_read_write, checks that all four fail.
    public func read(_ fd: CInt, into buffer: UnsafeMutableRawBufferPointer, offset: Int?) throws(Errno) -> Int {
        try mutex.withLock { () throws(Errno) -> Int in
            guard files[fd] != nil else { throw .badFileDescriptor }
            throw offset == nil ? .invalidArgument : .illegalSeek
        }
    }

    public func write(_ fd: CInt, from buffer: UnsafeRawBufferPointer, offset: Int?) throws(Errno) -> Int {
        try mutex.withLock { () throws(Errno) -> Int in
            guard files[fd] != nil else { throw .badFileDescriptor }
            throw offset == nil ? .invalidArgument : .illegalSeek
        }
    }

    /// lseek: KVM's anonymous-inode files, guest_memfd included, have no
    /// llseek operation and no FMODE_LSEEK, so vfs_llseek answers ESPIPE.
    public func lseek(_ fd: CInt, offset: Int, whence: CInt) throws(Errno) -> Int {
        try mutex.withLock { () throws(Errno) -> Int in
            guard files[fd] != nil else { throw .badFileDescriptor }
            throw .illegalSeek
        }
    }

    public func fallocate(_ fd: CInt, mode: CInt, offset: Int, length: Int) throws(Errno) {
        try mutex.withLock { () throws(Errno) in
            guard let file = files[fd] else { throw .badFileDescriptor }
            guard case .guestMemfd(let gmem) = file else { throw .noSuchDevice }
            // vfs_fallocate: a negative offset or a non-positive length.
            guard offset >= 0, length > 0 else { throw .invalidArgument }
            // kvm_gmem_fallocate: KEEP_SIZE is required, only PUNCH_HOLE may join it.
            guard mode & CKVM_FALLOC_FL_KEEP_SIZE != 0,
                  mode & ~(CKVM_FALLOC_FL_KEEP_SIZE | CKVM_FALLOC_FL_PUNCH_HOLE) == 0
            else { throw .notSupported }
            guard offset % Int(pageSize) == 0, length % Int(pageSize) == 0 else { throw .invalidArgument }
            let first = offset / Int(pageSize)
            if mode & CKVM_FALLOC_FL_PUNCH_HOLE != 0 {
                // kvm_gmem_punch_hole: any range, including past the end; pages read back as zero.
                let end = min(gmem.pageCount, first + length / Int(pageSize))
                if first < end {
                    gmem.free(first..<end, &host, rmp: &rmp)
                    _ = ckvm_fallocate(gmem.backing, CKVM_FALLOC_FL_KEEP_SIZE | CKVM_FALLOC_FL_PUNCH_HOLE,
                                       first * Int(pageSize), (end - first) * Int(pageSize))
                }
            } else {
                // kvm_gmem_allocate: the range must lie inside the file.
                guard UInt64(offset) + UInt64(length) <= gmem.size else { throw .invalidArgument }
                gmem.allocate(first..<(first + length / Int(pageSize)), &host)
            }
        }
    }

    // MARK: Descriptors

    private func install(_ file: FakeFile) -> CInt {
        let fd = nextFD
        nextFD += 1
        files[fd] = file
        return fd
    }

    private func objectID() -> Int {
        defer { nextObjectID += 1 }
        return nextObjectID
    }

    /// Drops a descriptor or mapping of `gmem`; the last one releases the
    /// file (`kvm_gmem_release`), which then drops its hold on the VM.
    private func dropReference(_ gmem: FakeGuestMemfd) {
        gmem.references -= 1
        if gmem.references == 0 {
            gmem.release(&host, rmp: &rmp)
            guestMemfds[gmem.id] = nil
            dropReference(gmem.vm)
        }
    }

    /// Drops a hold on `vm`; the last one destroys it (`kvm_destroy_vm`).
    /// For SNP (`sev_free_vcpu`, `sev_vm_destroy`) the VMSA pages return to
    /// the hypervisor and, with RMPOPT, a re-optimisation of all memory is
    /// scheduled (`snp_rmpopt_all_physmem`: a delayed work, re-armed by each
    /// destruction, that `runPendingRMPOptimization()` runs).
    private func dropReference(_ vm: FakeVM) {
        vm.references -= 1
        guard vm.references == 0 else { return }
        if let snp = vm.snp {
            for frame in snp.vmsaFrames {
                rmp.reclaimKernelPage(frame)
                host.freeKernelPage(frame)
            }
            vm.snp?.vmsaFrames = []
            if vm.type == .snp, snp.initialised { rmp.rmpopt?.pending = true }
        }
        vm.destroy()
    }

    private func realMap(_ address: UnsafeMutableRawPointer?, _ length: Int, _ protection: CInt, _ flags: CInt, _ fd: CInt,
                         _ offset: Int) throws(Errno) -> UnsafeMutableRawPointer
    {
        guard let base = Glibc.mmap(address, length, protection, flags, fd, off_t(offset)), base != MAP_FAILED else {
            throw Errno(rawValue: errno)
        }
        return base
    }

    // MARK: System ioctls (kvm_dev_ioctl, kvm_arch_dev_ioctl)

    private func systemIoctl(_ request: UInt, _ argument: UInt) throws(Errno) -> Int {
        switch Ioctl(request: request) {
        case .getAPIVersion?:
            guard argument == 0 else { throw .invalidArgument }
            return 12
        case .createVM?:
            guard let type = profile.vmTypes.first(where: { $0.rawValue == argument }) else { throw .invalidArgument }
            let vm = FakeVM(id: objectID(), type: type)
            return Int(install(.vm(vm)))
        case .checkExtension?:
            return capability(argument, vm: nil)
        case .getVCPUMmapSize?:
            guard argument == 0 else { throw .invalidArgument }
            return profile.vcpuMmapSize
        case .getSupportedCPUID?:
            return try getSupportedCPUID(argument)
        case .getDeviceAttr?, .hasDeviceAttr?:
            return try deviceAttribute(argument, read: Ioctl(request: request) == .getDeviceAttr)
        default:
            // kvm_arch_dev_ioctl answers unknown requests with EINVAL.
            throw .invalidArgument
        }
    }

    /// `KVM_CHECK_EXTENSION` (kvm_vm_ioctl_check_extension_generic and the x86 part).
    private func capability(_ number: UInt, vm: FakeVM?) -> Int {
        switch Capability(rawValue: UInt32(truncatingIfNeeded: number)) {
        case .nrMemslots?: return profile.memslots
        case .exitHypercall?: return 1 << Int(CKVM_HC_MAP_GPA_RANGE)
        case .userMemory2?, .memoryFaultInfo?: return 1
        case .guestMemfd?: return profile.guestMemfd ? 1 : 0
        case .memoryAttributes?: return Int(profile.supportedAttributes(for: vm?.type).rawValue)
        case .vmTypes?:
            // x86 only: a bit per type accepted by KVM_CREATE_VM.
            return profile.vmTypes.filter { $0.rawValue < 64 }.reduce(0) { $0 | (1 << Int($1.rawValue)) }
        case .preFaultMemory?: return profile.tdp ? 1 : 0
        case .guestMemfdFlags?: return Int(profile.guestMemfdFlags(for: vm?.type).rawValue)
        case .armRMI?: return profile.cca != nil ? 1 : 0
        case .guestMemfdMemoryAttributes?: return profile.guestMemfd && profile.inPlaceConversion ? Int(CKVM_MEMORY_ATTRIBUTE_PRIVATE) : 0
        case nil:
            switch number {
            case 3: return 1  // KVM_CAP_USER_MEMORY
            case 66: return 1024  // KVM_CAP_MAX_VCPUS
            case 128: return Int(profile.maxVCPUID)  // KVM_CAP_MAX_VCPU_ID
            default: return 0
            }
        }
    }

    private func getSupportedCPUID(_ argument: UInt) throws(Errno) -> Int {
        let entries = FakeKVM.supportedCPUID
        let header: kvm_cpuid2 = try load(argument)
        // kvm_dev_ioctl_get_cpuid: too few entries for the table.
        guard header.nent >= entries.count else { throw .argumentListTooLong }
        try store(UInt32(entries.count), at: argument)
        for (index, entry) in entries.enumerated() {
            try store(entry, at: argument + UInt(MemoryLayout<kvm_cpuid2>.size + index * MemoryLayout<kvm_cpuid_entry2>.stride))
        }
        return 0
    }

    /// A small CPUID table the fake reports and its SNP firmware accepts.
    static let supportedCPUID: [kvm_cpuid_entry2] = SNPCPUIDLeaf.defaultTable.map {
        var entry = kvm_cpuid_entry2()
        entry.function = $0.function
        entry.index = $0.index
        entry.eax = $0.eax
        entry.ebx = $0.ebx
        entry.ecx = $0.ecx
        entry.edx = $0.edx
        return entry
    }

    private func deviceAttribute(_ argument: UInt, read: Bool) throws(Errno) -> Int {
        let attr: kvm_device_attr = try load(argument)
        // kvm_x86_dev_get_attr: the SEV group exists only where SEV is enabled.
        guard attr.group == UInt32(CKVM_X86_GRP_SEV), let snp = profile.snp,
              attr.attr == UInt64(CKVM_X86_SEV_VMSA_FEATURES)
        else { throw .noSuchDeviceOrAddress }
        if read { try store(snp.vmsaFeatures, at: UInt(attr.addr)) }
        return 0
    }

    // MARK: VM ioctls (kvm_vm_ioctl, kvm_arch_vm_ioctl)

    private func vmIoctl(_ vm: FakeVM, _ request: UInt, _ argument: UInt) throws(Errno) -> Int {
        switch Ioctl(request: request) {
        case .checkExtension?:
            return capability(argument, vm: vm)
        case .createVCPU?:
            return try createVCPU(vm, id: argument)
        case .createGuestMemfd? where profile.guestMemfd:
            return try createGuestMemfd(vm, try load(argument))
        case .setUserMemoryRegion2?:
            try setMemoryRegion(vm, try load(argument), version2: true)
            return 0
        case .setUserMemoryRegion?:
            let v1: kvm_userspace_memory_region = try load(argument)
            var region = ckvm_userspace_memory_region2()
            region.slot = v1.slot
            region.flags = v1.flags
            region.guest_phys_addr = v1.guest_phys_addr
            region.memory_size = v1.memory_size
            region.userspace_addr = v1.userspace_addr
            try setMemoryRegion(vm, region, version2: false)
            return 0
        case .setMemoryAttributes? where profile.memoryAttributes:
            try setMemoryAttributes(vm, try load(argument))
            return 0
        case .enableCap?:
            let cap: kvm_enable_cap = try load(argument)
            // kvm_vm_ioctl_enable_cap: only KVM_CAP_EXIT_HYPERCALL is modelled.
            guard cap.flags == 0, cap.cap == Capability.exitHypercall.rawValue,
                  cap.args.0 & ~(1 << UInt64(CKVM_HC_MAP_GPA_RANGE)) == 0
            else { throw .invalidArgument }
            vm.exitHypercalls = cap.args.0
            return 0
        case .setTSSAddr?, .setIdentityMapAddr?:
            return 0
        case .setNrMMUPages?:
            // kvm_vm_ioctl_set_nr_mmu_pages: fewer than KVM_MIN_ALLOC_MMU_PAGES (64) is EINVAL.
            guard argument >= 64 else { throw .invalidArgument }
            return 0
        case .createIRQChip?:
            guard !vm.irqchip else { throw .fileExists }
            guard vm.vcpus.isEmpty else { throw .invalidArgument }
            vm.irqchip = true
            return 0
        case .createPIT2?:
            guard !vm.pit else { throw .fileExists }
            vm.pit = true
            return 0
        case .irqLine?:
            guard vm.irqchip else { throw .noSuchDeviceOrAddress }
            return 0
        case .memoryEncryptOp?:
            return try memoryEncryptOp(vm, vcpu: nil, argument)
        case .armRMIPopulate? where profile.cca != nil:
            return try realmPopulate(vm, argument)
        default:
            // kvm_arch_vm_ioctl answers unknown requests with ENOTTY.
            throw .notTTY
        }
    }

    /// KVM_CREATE_VCPU (kvm_vm_ioctl_create_vcpu).
    private func createVCPU(_ vm: FakeVM, id: UInt) throws(Errno) -> Int {
        guard id < UInt(profile.maxVCPUID) else { throw .invalidArgument }
        guard vm.vcpus[UInt32(id)] == nil else { throw .fileExists }
        // tdx_vcpu_create: a TD takes vCPUs only after KVM_TDX_INIT_VM.
        if vm.type == .tdx, vm.td?.state != .initialised { throw .ioError }
        let vcpu = try FakeVCPU(id: UInt32(id), vm: vm, runSize: profile.vcpuMmapSize)
        vm.vcpus[UInt32(id)] = vcpu
        vm.references += 1
        return Int(install(.vcpu(vcpu)))
    }

    /// KVM_CREATE_GUEST_MEMFD (kvm_gmem_create).
    private func createGuestMemfd(_ vm: FakeVM, _ request: ckvm_create_guest_memfd) throws(Errno) -> Int {
        let flags = GuestMemfdFlags(rawValue: request.flags)
        var checked = flags, placement = profile.placement, unit = pageSize
        if profile.guestMemfdHugeTLB, let size = flags.hugetlbPageSize {
            // The HugeTLB series: the size field names a HugeTLB pool (2 MiB
            // or 1 GiB here), and the file is made of whole huge pages.
            guard size == hugePageSize || size == 1 << 30 else { throw .invalidArgument }
            checked = GuestMemfdFlags(rawValue: flags.rawValue & ~CKVM_GUEST_MEMFD_HUGETLB_MASK)
            placement = size == hugePageSize ? .contiguous2M : .contiguous1G
            unit = size
        }
        guard profile.guestMemfdFlags(for: vm.type).isSuperset(of: checked) else { throw .invalidArgument }
        guard Int64(bitPattern: request.size) > 0, request.size % unit == 0 else { throw .invalidArgument }
        // The reserved words are not checked.
        let gmem = try FakeGuestMemfd(id: objectID(), vm: vm, size: request.size, flags: flags, placement: placement)
        guestMemfds[gmem.id] = gmem
        vm.references += 1
        return Int(install(.guestMemfd(gmem)))
    }

    /// KVM_SET_USER_MEMORY_REGION(2) (kvm_set_memory_region, check_memory_region_flags, kvm_gmem_bind).
    private func setMemoryRegion(_ vm: FakeVM, _ mem: ckvm_userspace_memory_region2, version2: Bool) throws(Errno) {
        let guestMemfd = UInt32(CKVM_MEM_GUEST_MEMFD)
        // The V1 ioctl knows only LOG_DIRTY_PAGES and READONLY.
        if !version2, mem.flags & ~UInt32(CKVM_MEM_LOG_DIRTY_PAGES | CKVM_MEM_READONLY) != 0 { throw .invalidArgument }
        // check_memory_region_flags (6.18): guest_memfd on every VM type where
        // CONFIG_KVM_GUEST_MEMFD is built in, never with dirty logging;
        // READONLY only where the VM has no protected state.
        var valid = UInt32(CKVM_MEM_LOG_DIRTY_PAGES) | (profile.guestMemfd ? guestMemfd : 0)
        if mem.flags & guestMemfd != 0 { valid &= ~UInt32(CKVM_MEM_LOG_DIRTY_PAGES) }
        let protectedState = vm.type == .sevES || vm.type == .snp || vm.type == .tdx
        if !protectedState, mem.flags & guestMemfd == 0 { valid |= UInt32(CKVM_MEM_READONLY) }
        guard mem.flags & ~valid == 0 else { throw .invalidArgument }

        let asID = mem.slot >> 16, id = mem.slot & 0xFFFF
        guard mem.memory_size % pageSize == 0, mem.guest_phys_addr % pageSize == 0 else { throw .invalidArgument }
        // access_ok: the host range must lie in user space (below TASK_SIZE_MAX).
        let taskSizeMax: UInt64 = 0x7FFF_FFFF_F000
        guard mem.userspace_addr % pageSize == 0, mem.userspace_addr <= taskSizeMax,
              mem.memory_size <= taskSizeMax - mem.userspace_addr
        else { throw .invalidArgument }
        if mem.flags & guestMemfd != 0 {
            let (_, wraps) = mem.guest_memfd_offset.addingReportingOverflow(mem.memory_size)
            guard mem.guest_memfd_offset % pageSize == 0, !wraps else { throw .invalidArgument }
        }
        // kvm_arch_nr_memslot_as_ids: x86 has a second (SMM) address space only
        // with CONFIG_KVM_SMM, and never for VMs with private memory.
        let addressSpaces: UInt32 = profile.smm && !vm.type.hasPrivateMemory ? 2 : 1
        guard asID < addressSpaces, id < UInt32(profile.memslots) else { throw .invalidArgument }
        let (_, gpaWraps) = mem.guest_phys_addr.addingReportingOverflow(mem.memory_size)
        guard !gpaWraps, mem.memory_size / pageSize <= (1 << 31) - 1 else { throw .invalidArgument }

        let old = vm.memslots[mem.slot]
        if mem.memory_size == 0 {
            // Deleting a slot that does not exist.
            guard let old else { throw .invalidArgument }
            vm.memslots[mem.slot] = nil
            old.gmem?.bindings.removeAll { $0 === old }
            return
        }
        let baseGFN = mem.guest_phys_addr / pageSize, pages = mem.memory_size / pageSize
        var isMove = true
        if let old {
            // Private memslots are immutable: they can only be deleted, neither
            // re-created, moved nor given new flags.
            guard mem.flags & guestMemfd == 0, old.gmem == nil else { throw .invalidArgument }
            guard mem.userspace_addr == old.userspaceAddress, pages == old.pageCount,
                  (mem.flags ^ old.flags) & UInt32(CKVM_MEM_READONLY) == 0
            else { throw .invalidArgument }
            if baseGFN == old.baseGFN {
                old.flags = mem.flags
                return
            }
            isMove = true
        }
        // kvm_check_memslot_overlap: a new or moved slot may not overlap another.
        if isMove, vm.memslots.values.contains(where: {
            $0.asID == asID && $0.id != id && baseGFN < $0.endGFN && $0.baseGFN < baseGFN + pages
        }) {
            throw .fileExists
        }
        if let old {
            old.baseGFN = baseGFN
            return
        }
        var gmem: FakeGuestMemfd?
        if mem.flags & guestMemfd != 0 {
            gmem = try bind(vm, fd: CInt(bitPattern: mem.guest_memfd), offset: mem.guest_memfd_offset, size: mem.memory_size)
        }
        let slot = FakeMemslot(asID: asID, id: id, flags: mem.flags, baseGFN: baseGFN, pageCount: pages,
                               userspaceAddress: mem.userspace_addr, gmem: gmem,
                               gmemFirstPage: mem.guest_memfd_offset / pageSize)
        gmem?.bindings.append(slot)
        vm.memslots[mem.slot] = slot
    }

    /// kvm_gmem_bind: the descriptor, its VM, the range inside the file, and
    /// that no other slot is bound to any of its pages.
    private func bind(_ vm: FakeVM, fd: CInt, offset: UInt64, size: UInt64) throws(Errno) -> FakeGuestMemfd {
        // fget finds any open file of the process (EBADF only for none); a
        // file that is not a guest_memfd fails the f_op check with EINVAL.
        // The fake's own descriptors are numbered apart from the process's,
        // so a real descriptor of this process is such a file.
        guard let file = files[fd] else { throw fcntl(fd, F_GETFD) >= 0 ? .invalidArgument : .badFileDescriptor }
        guard case .guestMemfd(let gmem) = file, gmem.vm === vm else { throw .invalidArgument }
        guard Int64(bitPattern: offset) >= 0, offset + size <= gmem.size else { throw .invalidArgument }
        let first = offset / pageSize, end = first + size / pageSize
        if gmem.bindings.contains(where: { first < $0.gmemFirstPage + $0.pageCount && $0.gmemFirstPage < end }) {
            throw profile.bindingOverlapErrno
        }
        return gmem
    }

    /// KVM_SET_MEMORY_ATTRIBUTES (kvm_vm_ioctl_set_mem_attributes): all or nothing, nothing written back.
    private func setMemoryAttributes(_ vm: FakeVM, _ attrs: ckvm_memory_attributes) throws(Errno) {
        guard attrs.flags == 0 else { throw .invalidArgument }
        guard attrs.attributes & ~profile.supportedAttributes(for: vm.type).rawValue == 0 else { throw .invalidArgument }
        let (end, wraps) = attrs.address.addingReportingOverflow(attrs.size)
        guard attrs.size > 0, !wraps else { throw .invalidArgument }
        guard attrs.address % pageSize == 0, attrs.size % pageSize == 0 else { throw .invalidArgument }
        vm.attributes.set(attrs.address / pageSize, end / pageSize, to: attrs.attributes)
    }

    /// KVM_SET_MEMORY_ATTRIBUTES2 on a guest_memfd (in-place conversion series
    /// v8, `kvm_gmem_set_attributes`): every check before any change, then
    /// the whole range converts. To private, host mappings lose the pages;
    /// to shared, the platform takes them back (`kvm_arch_gmem_invalidate`:
    /// on SNP the RMP entries return to the hypervisor). The bytes are not
    /// touched by KVM. The struct is copied back only on error.
    private func setMemoryAttributes2(_ gmem: FakeGuestMemfd, _ argument: UInt) throws(Errno) {
        var request: ckvm_memory_attributes2 = try load(argument)
        let reservedClear = withUnsafeBytes(of: request.reserved) { $0.allSatisfy { $0 == 0 } }
        let (end, wraps) = request.offset.addingReportingOverflow(request.size)
        let valid = request.flags == 0 && reservedClear
            && request.attributes & ~CKVM_MEMORY_ATTRIBUTE_PRIVATE == 0 && gmem.vm.type.hasPrivateMemory
            && request.size > 0 && !wraps && request.offset % pageSize == 0 && request.size % pageSize == 0
            && end <= gmem.size
        guard valid else {
            request.error_offset = request.offset
            try store(request, at: argument)
            throw .invalidArgument
        }
        let toPrivate = request.attributes & CKVM_MEMORY_ATTRIBUTE_PRIVATE != 0
        let range = Int(request.offset / pageSize)..<Int(end / pageSize)
        if !toPrivate { gmem.reclaimRMP(range, host, rmp: &rmp) }
        gmem.update(range) { $0.shared = !toPrivate }
        for mapping in mappings {
            setHostAccess(mapping, gmem, offset: request.offset, size: request.size, shared: !toPrivate)
        }
    }

    // MARK: Host access to private pages

    /// A host access to a private guest_memfd page faults: the fault
    /// handler answers SIGBUS (`kvm_gmem_fault_user_mapping`), and a
    /// conversion to private first zaps the host's page-table entries
    /// (`kvm_gmem_set_attributes` in the in-place conversion series; on 6.18
    /// a file made without INIT_SHARED is private throughout). The fake maps
    /// such pages of the host's mapping to the far end of an empty memfd, so
    /// a direct load or store raises SIGBUS as the kernel's does, and the
    /// kernel's own copies from them (write(2), MADV_POPULATE_*) fail with
    /// EFAULT and move no byte; a page made shared again gets its bytes back.
    private func withholdPrivatePages(of gmem: FakeGuestMemfd, in mapping: FakeMapping) {
        guard case .guestMemfd(_, let offset) = mapping.target else { return }
        let pages = min(UInt64(mapping.length), gmem.size > offset ? gmem.size - offset : 0) / pageSize
        guard pages > 0 else { return }
        let first = Int(offset / pageSize)
        if !gmem.initiallyShared {
            setHostAccess(mapping, gmem, offset: offset, size: pages * pageSize, shared: false)
        }
        let initial = gmem.initiallyShared
        for stretch in gmem.stretches(first..<(first + Int(pages)), where: { $0.shared != initial }) {
            setHostAccess(mapping, gmem, offset: UInt64(stretch.lowerBound) * pageSize, size: UInt64(stretch.count) * pageSize,
                          shared: !initial)
        }
    }

    /// Gives the part of `mapping` that shows file bytes [offset, offset + size)
    /// of `gmem` back its protection, or takes it away.
    private func setHostAccess(_ mapping: FakeMapping, _ gmem: FakeGuestMemfd, offset: UInt64, size: UInt64, shared: Bool) {
        guard case .guestMemfd(let target, let mapped) = mapping.target, target === gmem else { return }
        let start = max(offset, mapped), end = min(offset + size, mapped + UInt64(mapping.length))
        guard start < end, let address = UnsafeMutableRawPointer(bitPattern: mapping.base + UInt(start - mapped)) else { return }
        let fd = shared ? gmem.backing : Self.busFile, fileOffset = shared ? off_t(start) : 0
        _ = Glibc.mmap(address, Int(end - start), mapping.protection, MAP_SHARED | MAP_FIXED, fd, fileOffset)
    }

    /// An empty memfd: every page of a mapping of it lies past its end, where an access raises SIGBUS.
    private static let busFile: CInt = ckvm_memfd_create("fake-guest-memfd-private", 1 /* MFD_CLOEXEC */)

    // MARK: vCPU ioctls (kvm_vcpu_ioctl, kvm_arch_vcpu_ioctl)

    private func vcpuIoctl(_ vcpu: FakeVCPU, _ request: UInt, _ argument: UInt) throws(Errno) -> Int {
        let ioctl = Ioctl(request: request)
        if let ioctl, [.getRegs, .setRegs, .getSregs, .setSregs].contains(ioctl), guestStateProtected(vcpu) {
            // kvm_arch_vcpu_ioctl_{get,set}_{regs,sregs}: EINVAL once the
            // state lives in encrypted memory (has_protected_state and
            // guest_state_protected: an SNP VMSA after LAUNCH_FINISH, every
            // vCPU of a TD without the DEBUG attribute, tdx_vcpu_create).
            throw .invalidArgument
        }
        switch ioctl {
        case .run?:
            try run(vcpu)
            return 0
        case .getRegs?:
            try store(vcpu.regs, at: argument)
            return 0
        case .setRegs?:
            vcpu.regs = try load(argument)
            return 0
        case .getSregs?:
            try store(vcpu.sregs, at: argument)
            return 0
        case .setSregs?:
            vcpu.sregs = try load(argument)
            return 0
        case .setCPUID2?:
            let header: kvm_cpuid2 = try load(argument)
            // kvm_vcpu_ioctl_set_cpuid2: at most KVM_MAX_CPUID_ENTRIES (256).
            guard header.nent <= 256 else { throw .argumentListTooLong }
            vcpu.cpuid = try (0..<Int(header.nent)).map { (index) throws(Errno) in
                try load(argument + UInt(MemoryLayout<kvm_cpuid2>.size + index * MemoryLayout<kvm_cpuid_entry2>.stride))
            }
            return 0
        case .getMPState?:
            // The fake's vCPUs are always runnable; scripts model halts as exits.
            try store(kvm_mp_state(mp_state: UInt32(KVM_MP_STATE_RUNNABLE)), at: argument)
            return 0
        case .preFaultMemory?:
            return try preFaultMemory(vcpu, argument)
        case .memoryEncryptOp?:
            return try memoryEncryptOp(vcpu.vm, vcpu: vcpu, argument)
        default:
            // kvm_arch_vcpu_ioctl answers unknown requests with EINVAL.
            throw .invalidArgument
        }
    }

    /// Whether the vCPU's register state is encrypted and out of the host's reach.
    private func guestStateProtected(_ vcpu: FakeVCPU) -> Bool {
        if vcpu.vm.snp?.finished == true { return true }
        // TDX_TD_ATTR_DEBUG is attribute bit 0.
        if vcpu.vm.type == .tdx { return (vcpu.vm.td?.attributes ?? 0) & 1 == 0 }
        return false
    }

    /// KVM_PRE_FAULT_MEMORY (kvm_vcpu_pre_fault_memory, kvm_arch_vcpu_pre_fault_memory).
    private func preFaultMemory(_ vcpu: FakeVCPU, _ argument: UInt) throws(Errno) -> Int {
        var range: ckvm_pre_fault_memory = try load(argument)
        guard range.flags == 0 else { throw .invalidArgument }
        let (_, wraps) = range.gpa.addingReportingOverflow(range.size)
        guard range.gpa % pageSize == 0, range.size % pageSize == 0, range.size > 0, !wraps else {
            throw .invalidArgument
        }
        let fullSize = range.size
        var failure: Errno?
        repeat {
            if let signal = takeSignal(for: .preFaultMemory) {
                failure = signal
                break
            }
            do throws(Errno) {
                let mapped = try preFaultChunk(vcpu.vm, gpa: range.gpa, size: range.size)
                range.gpa += mapped
                range.size -= mapped
                pagesDone(Int(mapped / pageSize), for: .preFaultMemory)
            } catch {
                failure = error
                break
            }
        } while range.size > 0
        // The struct goes back to userspace whether or not anything was done.
        try store(range, at: argument)
        if let failure, range.size == fullSize { throw failure }
        return 0
    }

    /// One kvm_tdp_map_page: maps the 4 KiB page at `gpa`, or the whole 2 MiB
    /// page around it when one memslot and one attribute cover it and, for
    /// guest_memfd memory, its folio is a 2 MiB HugeTLB page (the max_order
    /// `kvm_gmem_get_pfn` reports; other guest_memfd folios are single
    /// pages). Returns how much of the request that covers.
    ///
    /// Faulting private guest_memfd memory prepares its folio
    /// (`kvm_gmem_prepare_folio`); after an SNP launch that assigns it in
    /// the RMP (`sev_gmem_prepare`): one 2 MiB entry where the folio is a
    /// 2 MiB-aligned huge page and the platform keeps large entries, else a
    /// 4 KiB entry per page. With no signal pending, single pages up to the
    /// next 2 MiB boundary are done at once, as that many calls would do them.
    private func preFaultChunk(_ vm: FakeVM, gpa: UInt64, size: UInt64) throws(Errno) -> UInt64 {
        guard vm.preFaultAllowed else { throw .notSupported }
        guard profile.tdp else { throw .notSupported }
        let gfn = gpa / pageSize
        // No memslot: the MMIO/emulate path, RET_PF_EMULATE.
        guard let slot = vm.slot(containing: gfn) else { throw .noSuchFileOrDirectory }
        let isPrivate = self.isPrivate(vm, gfn: gfn)
        let hugePages = hugePageSize / pageSize
        let hugeStart = gfn / hugePages * hugePages
        var huge = slot.contains(hugeStart) && slot.contains(hugeStart + hugePages - 1)
            && vm.attributes.allEqual(hugeStart, hugeStart + hugePages, to: vm.attributes.value(at: gfn))
        guard isPrivate || slot.gmemOnly else {
            let level = huge ? hugePageSize : pageSize
            return min(size, gpa / level * level + level - gpa)
        }
        // kvm_mmu_faultin_pfn_gmem: a private fault needs a live guest_memfd binding.
        guard let gmem = slot.gmem, !slot.gmemClosed else { throw .badAddress }
        huge = huge && gmem.hugeFolios && (!profile.inPlaceConversion
            || gmem.stretches(slot.gmemPage(hugeStart)..<(slot.gmemPage(hugeStart) + Int(hugePages)),
                              where: { $0.shared == !isPrivate }).first?.count == Int(hugePages))
        let first = huge ? hugeStart : gfn
        var count: UInt64 = huge ? hugePages : 1
        if !huge, pendingSignals.isEmpty {
            // Pages of the same kind up to the next 2 MiB boundary, the end of the request or of the slot.
            let sameKind = profile.inPlaceConversion
                ? UInt64(gmem.pages.segment(at: UInt64(slot.gmemPage(gfn))).end) &- UInt64(slot.gmemPage(gfn)) &+ gfn
                : vm.attributes.segment(at: gfn).end
            count = min(hugeStart + hugePages, gfn + size / pageSize, slot.endGFN, sameKind) - gfn
        }
        let pages = slot.gmemPage(first)..<(slot.gmemPage(first) + Int(count))
        gmem.allocate(pages, &host)
        gmem.update(pages) { $0.prepared = true }
        if isPrivate, let snp = vm.snp, snp.finished {
            let large = huge && profile.snp?.largeRMPEntries == true
                && gmem.frame(pages.lowerBound, host).map { $0 % hugePages == 0 } == true
            for stretch in gmem.stretches(pages, where: { $0.rmp == nil && $0.allocated }) {
                let stretchGPA = (first + UInt64(stretch.lowerBound - pages.lowerBound)) * pageSize
                gmem.assignRMP(stretch, gpa: stretchGPA, asid: snp.asid, immutable: false, validated: false,
                               isLarge: large && stretch == pages, host, rmp: &rmp)
            }
        }
        return min(size, (first + count) * pageSize - gpa)
    }

    // MARK: KVM_RUN

    /// Runs the vCPU's script until a step exits to userspace.
    private func run(_ vcpu: FakeVCPU) throws(Errno) {
        // tdx_vcpu_pre_run and svm_vcpu_pre_run refuse a TD that is not
        // finalised and an SNP vCPU without a launched VMSA.
        guard vcpu.vm.runnable else { throw .invalidArgument }
        if vcpu.vm.type == .armRealm { activateRealm(vcpu.vm) }
        let run = vcpu.run
        // No memslot at all: fetching the first instruction finds no memory, and
        // emulating it fails (handle_emulation_failure): an internal error
        // (set_memory_region_test, test_zero_memory_regions). Modelled for the
        // VM types whose registers the host sets; confidential vCPUs start in
        // firmware-defined state the fake does not fetch from.
        if vcpu.vm.memslots.isEmpty, vcpu.vm.type == .default || vcpu.vm.type == .swProtected {
            run.pointee.exit_reason = UInt32(KVM_EXIT_INTERNAL_ERROR)
            run.pointee.internal.suberror = UInt32(KVM_INTERNAL_ERROR_EMULATION)
            return
        }
        // complete_emulated_mmio: an MMIO read gets the bytes the host left in mmio.data.
        if let count = vcpu.pendingMMIORead.take() {
            vcpu.reads.append(withUnsafeBytes(of: run.pointee.mmio.data) { Array($0.prefix(count)) })
        }
        while vcpu.nextStep < vcpu.script.count {
            let step = vcpu.script[vcpu.nextStep]
            switch step {
            case .shutdown:
                vcpu.nextStep += 1
                run.pointee.exit_reason = UInt32(KVM_EXIT_SHUTDOWN)
                return
            case .systemEvent(let type):
                vcpu.nextStep += 1
                run.pointee.exit_reason = UInt32(KVM_EXIT_SYSTEM_EVENT)
                run.pointee.system_event.type = type
                return
            case .hypercall(let nr, let arguments):
                vcpu.nextStep += 1
                // Only numbers KVM_CAP_EXIT_HYPERCALL enabled exit; the others return -KVM_ENOSYS to the guest.
                guard nr < 64, vcpu.vm.exitHypercalls & (1 << nr) != 0 else { continue }
                let a = arguments + [UInt64](repeating: 0, count: max(0, 6 - arguments.count))
                run.pointee.exit_reason = UInt32(KVM_EXIT_HYPERCALL)
                run.pointee.hypercall.nr = nr
                run.pointee.hypercall.args = (a[0], a[1], a[2], a[3], a[4], a[5])
                return
            case .load(let gpa, let count):
                var bytes: [UInt8] = []
                let isPrivate = vcpu.vm.type == .swProtected && isPrivate(vcpu.vm, gfn: gpa / pageSize)
                if try !guestAccess(vcpu, gpa: gpa, count: count, isPrivate: isPrivate, write: nil, into: &bytes) { return }
                vcpu.reads.append(bytes)
                vcpu.nextStep += 1
            case .store(let gpa, let data):
                var unused: [UInt8] = []
                let isPrivate = vcpu.vm.type == .swProtected && isPrivate(vcpu.vm, gfn: gpa / pageSize)
                if try !guestAccess(vcpu, gpa: gpa, count: data.count, isPrivate: isPrivate, write: data, into: &unused) {
                    return
                }
                vcpu.nextStep += 1
            case .halt:
                vcpu.nextStep += 1
                run.pointee.exit_reason = UInt32(KVM_EXIT_HLT)
                return
            case .portOut(let port, let bytes):
                vcpu.nextStep += 1
                run.pointee.exit_reason = UInt32(KVM_EXIT_IO)
                run.pointee.io.direction = UInt8(KVM_EXIT_IO_OUT)
                run.pointee.io.size = UInt8(bytes.count)
                run.pointee.io.port = port
                run.pointee.io.count = 1
                run.pointee.io.data_offset = pageSize
                (vcpu.runView + Int(pageSize)).copyMemory(from: bytes, byteCount: bytes.count)
                return
            case .mapGPARange(let gpa, let pages, let toPrivate):
                vcpu.nextStep += 1
                guard vcpu.vm.exitHypercalls & (1 << UInt64(CKVM_HC_MAP_GPA_RANGE)) != 0 else { continue }
                run.pointee.exit_reason = UInt32(KVM_EXIT_HYPERCALL)
                run.pointee.hypercall.nr = UInt64(CKVM_HC_MAP_GPA_RANGE)
                run.pointee.hypercall.args = (gpa, pages, toPrivate ? CKVM_MAP_GPA_RANGE_ENCRYPTED : 0, 0, 0, 0)
                return
            case .read(let gpa, let count, let isPrivate):
                var bytes: [UInt8] = []
                if try !guestAccess(vcpu, gpa: gpa, count: count, isPrivate: isPrivate, write: nil, into: &bytes) { return }
                vcpu.reads.append(bytes)
                vcpu.nextStep += 1
            case .write(let gpa, let data, let isPrivate):
                var unused: [UInt8] = []
                if try !guestAccess(vcpu, gpa: gpa, count: data.count, isPrivate: isPrivate, write: data, into: &unused) {
                    return
                }
                vcpu.nextStep += 1
            }
        }
        run.pointee.exit_reason = UInt32(KVM_EXIT_HLT)
    }

    /// Performs one guest access page by page. Returns false when the vCPU
    /// exited to userspace (MMIO); throws EFAULT with a memory-fault exit
    /// where KVM would (kvm_mmu_prepare_memory_fault_exit).
    private func guestAccess(_ vcpu: FakeVCPU, gpa: UInt64, count: Int, isPrivate: Bool, write: [UInt8]?,
                             into output: inout [UInt8]) throws(Errno) -> Bool {
        let vm = vcpu.vm, run = vcpu.run
        var done = 0
        while done < count {
            let address = gpa + UInt64(done), gfn = address / pageSize
            let inPage = min(count - done, Int(pageSize - address % pageSize))
            guard let slot = vm.slot(containing: gfn) else {
                // A private access with no memslot: kvm_mmu_faultin_pfn_gmem finds
                // no slot that can be private and exits with a memory fault.
                if isPrivate, vm.type.hasPrivateMemory {
                    let fault = ckvm_run_memory_fault(run)
                    run.pointee.exit_reason = UInt32(CKVM_EXIT_MEMORY_FAULT)
                    fault.pointee.flags = CKVM_MEMORY_EXIT_FLAG_PRIVATE
                    fault.pointee.gpa = gfn * pageSize
                    fault.pointee.size = pageSize
                    throw .badAddress
                }
                run.pointee.exit_reason = UInt32(KVM_EXIT_MMIO)
                run.pointee.mmio.phys_addr = address
                run.pointee.mmio.len = UInt32(min(inPage, 8))
                run.pointee.mmio.is_write = write == nil ? 0 : 1
                // A write's bytes travel in mmio.data (x86.c, emulator_read_write_onepage
                // and complete_emulated_mmio copy at most 8 of them per exit).
                if let write {
                    let bytes = Array(write[done..<(done + min(inPage, 8))])
                    withUnsafeMutableBytes(of: &run.pointee.mmio.data) { $0.copyBytes(from: bytes) }
                } else {
                    vcpu.pendingMMIORead = min(inPage, 8)
                }
                vcpu.nextStep += 1
                return false
            }
            let attributePrivate = self.isPrivate(vm, gfn: gfn)
            func memoryFault() -> Errno {
                let fault = ckvm_run_memory_fault(run)
                run.pointee.exit_reason = UInt32(CKVM_EXIT_MEMORY_FAULT)
                fault.pointee.flags = isPrivate ? CKVM_MEMORY_EXIT_FLAG_PRIVATE : 0
                fault.pointee.gpa = gfn * pageSize
                fault.pointee.size = pageSize
                return .badAddress
            }
            // The access and the page's attribute disagree: an implicit conversion request.
            guard isPrivate == attributePrivate else { throw memoryFault() }
            let target: UnsafeMutableRawPointer
            if isPrivate || slot.gmemOnly {
                guard let gmem = slot.gmem, !slot.gmemClosed else { throw memoryFault() }
                let index = slot.gmemPage(gfn)
                gmem.allocate(index..<(index + 1), &host)
                gmem.update(index..<(index + 1)) { $0.prepared = true }
                if isPrivate, let snp = vm.snp, snp.finished, gmem.frame(index, host) != nil, gmem.state(index).rmp == nil {
                    // sev_gmem_prepare: after launch, private pages are assigned on first fault.
                    gmem.assignRMP(index..<(index + 1), gpa: gfn * pageSize, asid: snp.asid, immutable: false, validated: false,
                                   isLarge: false, host, rmp: &rmp)
                }
                target = gmem.view + index * Int(pageSize) + Int(address % pageSize)
            } else {
                guard let hva = userPointer(slot.userspaceAddress + (gfn - slot.baseGFN) * pageSize, count: Int(pageSize))
                else { throw .badAddress }
                target = hva + Int(address % pageSize)
            }
            if let write {
                write[done..<(done + inPage)].withUnsafeBytes { target.copyMemory(from: $0.baseAddress!, byteCount: inPage) }
            } else {
                output.append(contentsOf: UnsafeRawBufferPointer(start: target, count: inPage))
            }
            done += inPage
        }
        return true
    }

    // MARK: Signals

    /// The pending signal due before the next page of `ioctl`, if any; it is
    /// delivered once (a persistent fault stays). Every place the kernel
    /// checks `signal_pending()` asks.
    func takeSignal(for ioctl: Ioctl) -> Errno? {
        guard let index = pendingSignals.firstIndex(where: { ($0.ioctl == nil || $0.ioctl == ioctl) && $0.pagesLeft <= 0 })
        else { return nil }
        if pendingSignals[index].persistent { return pendingSignals[index].errno }
        return pendingSignals.remove(at: index).errno
    }

    /// Counts pages of `ioctl`'s work toward pending signals.
    func pagesDone(_ pages: Int, for ioctl: Ioctl) {
        for index in pendingSignals.indices where pendingSignals[index].ioctl == nil || pendingSignals[index].ioctl == ioctl {
            pendingSignals[index].pagesLeft -= pages
        }
    }

    // MARK: User memory

    /// `copy_from_user` of a `T` at `address`: EFAULT where the memory is not mapped.
    func load<T>(_ address: UInt) throws(Errno) -> T {
        guard let pointer = userPointer(UInt64(address), count: MemoryLayout<T>.size) else { throw .badAddress }
        return UnsafeRawPointer(pointer).loadUnaligned(as: T.self)
    }

    /// `copy_to_user` of `value` to `address`: EFAULT where the memory is not mapped.
    func store<T>(_ value: T, at address: UInt) throws(Errno) {
        guard let pointer = userPointer(UInt64(address), count: MemoryLayout<T>.size) else { throw .badAddress }
        withUnsafeBytes(of: value) { pointer.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }

    /// `address` as a pointer when all `count` bytes from it are mapped in
    /// this process (mincore(2) fails with ENOMEM on an unmapped page), so
    /// that a bad user pointer is EFAULT, as for the kernel, not a crash.
    func userPointer(_ address: UInt64, count: Int) -> UnsafeMutableRawPointer? {
        guard address != 0, let pointer = UnsafeMutableRawPointer(bitPattern: UInt(address)) else { return nil }
        let first = address / pageSize * pageSize
        let length = Int((address + UInt64(max(count, 1)) - first + pageSize - 1) / pageSize * pageSize)
        var residency = [UInt8](repeating: 0, count: length / Int(pageSize))
        guard let start = UnsafeMutableRawPointer(bitPattern: UInt(first)),
              mincore(start, length, &residency) == 0
        else { return nil }
        return pointer
    }

    // MARK: Platform hooks (in the platform files)

    func withLock<R>(_ body: () throws -> R) rethrows -> R { try mutex.withLockUntyped(body) }
    func file(_ fd: CInt) -> FakeFile? { files[fd] }
    func newObjectID() -> Int { objectID() }
    func armSignal(_ signal: PendingSignal) { pendingSignals.append(signal) }
    var liveMappingCount: Int { mappings.count }
    var openFileCount: Int { files.count }
}

/// A pthread mutex; the fake serialises every call on one.
final class FakeMutex: @unchecked Sendable {
    private var mutex = pthread_mutex_t()

    init() { pthread_mutex_init(&mutex, nil) }
    deinit { pthread_mutex_destroy(&mutex) }

    func withLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return try body()
    }

    func withLockUntyped<R>(_ body: () throws -> R) rethrows -> R {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return try body()
    }
}
