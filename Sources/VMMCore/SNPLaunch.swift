#if canImport(Glibc)
import Glibc
#endif
import GuestMemfd
import LaunchMeasurement
import Populate

/// The SEV-SNP launch of a machine on a host that offers SEV-SNP: the boot
/// state goes into vCPU 0 first, because LAUNCH_FINISH seals the registers
/// into the encrypted VMSA, then LAUNCH_START, the plan through the
/// population engine, and LAUNCH_FINISH.
public enum SNPLaunch {
    /// QEMU's defaults: policy 0x30000 (SMT allowed, ABI 0.0), no VMSA features.
    static let parameters = SNPLaunchParameters()

    /// `setup`'s plan with the CPUID table built from the machine's CPUID.
    public static func plan(_ setup: BootSetup, machine: Machine) throws(PopulateFailure) -> LaunchPlan {
        var plan = setup.plan
        for index in plan.regions.indices where plan.regions[index].kind == .cpuid {
            do {
                plan.regions[index].contents = .bytes(try SNPCPUIDTable.page(for: machine.cpuid))
            } catch {
                throw .engine("building the SEV-SNP CPUID page: \(error)")
            }
        }
        return plan
    }

    /// - Parameter options: the engine's options; with `acceptCorrectedPages`
    ///   a CPUID table the firmware corrects is sent again with its values,
    ///   and `log` receives a line for each value it changed.
    public static func perform(_ setup: BootSetup, machine: Machine, options: PopulateOptions = PopulateOptions())
        throws(PopulateFailure) -> PopulateResult
    {
        guard machine.snp != nil else { throw .engine("the machine was not created for SEV-SNP") }
        let plan = try plan(setup, machine: machine)
        do {
            let (regs, sregs) = try Machine.registers(for: setup.cpu, from: machine.vcpus[0])
            try machine.session.setBootState(regs: regs, sregs: sregs)
            return try machine.session.populate(plan, options: options)
        } catch let error as LaunchError {
            throw PopulateFailure(error, context: "starting the SEV-SNP launch")
        } catch {
            throw .engine("starting the SEV-SNP launch: \(error)")
        }
    }
}

/// Prints a confidential launch's measurement and report on standard error
/// and writes its ledger where asked.
public enum LaunchReport {
    /// - Parameter log: receives each line of the measurement and report.
    public static func print(_ result: PopulateResult, label: String, ledgerPath: String?,
                             log: (String) -> Void) throws(PopulateFailure) {
        let measurement = result.expectedMeasurement.map { Hex.encode($0) } ?? "none"
        log("\(label) launch measurement \(measurement)")
        for line in result.report.description.split(separator: "\n") { log("  \(line)") }
        guard let ledgerPath else { return }
        let text = Array(result.ledger.jsonLines.utf8)
        let fd = open(ledgerPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .file(path: ledgerPath, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var done = 0
        while done < text.count {
            let written = text.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
            if written < 0 {
                if errno == EINTR { continue }
                throw .file(path: ledgerPath, reason: String(cString: strerror(errno)))
            }
            done += written
        }
    }
}
