#if canImport(Glibc)
import Glibc
#endif
import GuestMemfd
import LaunchMeasurement
import Populate
import VMMCore

/// `snpvmm measure`: offline launch measurements.
///
/// `--mode snp` and `--mode snp:ovmf-hash` take sev-snp-measure 0.0.13's
/// flags and give its output, errors and exit statuses (argparse usage
/// errors exit 2, failures print "Error: …" and exit 1), so scripts can
/// switch between the two. `--mode tdx` computes MRTD from a TDVF image and
/// `--mode cca` the realm initial measurement of an arm64 direct kernel boot.
enum MeasureCommand {
    static let summary = """
        measure --mode snp|snp:ovmf-hash|tdx|cca ...
                            compute a launch measurement offline; SNP flags and
                            output as sev-snp-measure's (see measure --help)
        """

    static let help = """
        usage: snpvmm measure --mode snp --ovmf FILE --vcpus N
                              (--vcpu-type NAME | --vcpu-sig SIG | --vcpu-family F --vcpu-model M --vcpu-stepping S)
                              [--vmm-type QEMU|ec2|gce] [--kernel FILE [--initrd FILE] [--append STR]]
                              [--guest-features VALUE] [--snp-ovmf-hash HEX] [--dump-vmsa]
                              [--output-format hex|base64] [-v]
               snpvmm measure --mode snp:ovmf-hash --ovmf FILE
               snpvmm measure --mode sev --ovmf FILE [--kernel FILE [--initrd FILE] [--append STR]]
               snpvmm measure --mode seves --ovmf FILE --vcpus N (--vcpu-type NAME | ...) [--vmm-type QEMU|ec2|gce]
                              [--kernel FILE [--initrd FILE] [--append STR]] [--dump-vmsa]
               snpvmm measure --mode tdx --tdvf FILE [--output-format hex|base64] [-v]
               snpvmm measure --mode cca --kernel Image [--initrd FILE] --dtb FILE --memory SIZE
                              --num-bps N --num-wps N [--ram-base ADDR] [--hash-algo sha256|sha384|sha512]
                              [--ipa-bits N] [--sve-vl BITS] [--pmu-num-ctrs N] [--lpa2]
                              [--output-format hex|base64] [-v]

        snp, snp:ovmf-hash  the SEV-SNP launch digest, bit for bit as sev-snp-measure 0.0.13
                            computes it, with the same flags, output and exit statuses
        tdx                 MRTD from the TDVF metadata (MR.EXTEND and PAGE.AUG attributes)
        cca                 the realm initial measurement (RMM v2.0) of a QEMU-virt style direct
                            boot: Image at the RAM base (default 0x40000000), initrd, DTB, one REC

        --igvm FILE with --mode snp (instead of --ovmf) measures an IGVM file's SEV-SNP
        directives as QEMU's IGVM loader launches them; pages without data count as NORMAL
        pages of zeros (igvmmeasure's default) or, with --native-zero, as ZERO pages. KVM's
        rules apply unless --no-check-kvm: one VMSA, at 0xfffffffff000, with a CR0 KVM keeps,
        and nothing measured after it.

        A reference-value matrix (extensions of sev-snp-measure's flags): --vcpus takes a
        range or list (1-16, 1,2,4,8) and --vcpu-type several names (EPYC-Milan,EPYC-Genoa);
        one line per combination, or with --json one record each. --idkey PEM --authorkey PEM
        with --json add each record's ID block as snpvmm id-block makes it (id_block,
        id_auth, id_key_hash, author_key).

        vCPU types: \(SNPVCPUSignature.types.map(\.name).joined(separator: ", "))
        Exit status: 0 on success, 1 when the inputs cannot be measured, 2 for a usage error.
        """

    static func run(_ arguments: [String]) -> ExitCode {
        let parser = MeasureArguments()
        let values: [String: String]
        do { values = try parser.parse(arguments) } catch { return usageError(error.description) }
        if values["--help"] != nil {
            print(help)
            return .success
        }
        if values["--version"] != nil {
            print("snpvmm measure (sev-snp-measure 0.0.13 compatible)")
            return .success
        }
        do {
            switch values["--mode"] {
            case "tdx": return try measureTDX(values)
            case "cca": return try measureCCA(values)
            default: return try measureSNP(values)
            }
        } catch let error as UsageError {
            return usageError(error.description)
        } catch {
            return runtimeError("\(error)")
        }
    }

    /// sev-snp-measure's `--mode snp` and `--mode snp:ovmf-hash`, step for step in the order of its `cli.py` `main`.
    static func measureSNP(_ values: [String: String]) throws -> ExitCode {
        if values["--igvm"] != nil { return try measureIGVM(values) }
        for flag in ["--native-zero", "--no-check-kvm"] where values[flag] != nil {
            throw UsageError("\(flag) applies to --igvm")
        }
        let mode = values["--mode"]!
        let ovmfPath = values["--ovmf"]!
        if mode == "snp:ovmf-hash" {
            let image = try OVMFImage(path: ovmfPath)
            print(try SNPGuestMeasurement.firmwareDigest(of: image).hex)
            return .success
        }
        // Python tests these strings for truth: an empty --kernel means no kernel.
        let kernel = values["--kernel"].flatMap { $0.isEmpty ? nil : $0 }
        let initrd = values["--initrd"].flatMap { $0.isEmpty ? nil : $0 }
        let append = values["--append"].flatMap { $0.isEmpty ? nil : $0 }
        if initrd != nil, values["--kernel"] == nil { throw UsageError("--kernel required when using --initrd") }
        if append != nil, values["--kernel"] == nil { throw UsageError("--kernel required when using --append") }
        if mode == "sev" {
            return try measureSEV(values, vcpus: 0, signature: 0, vmmType: .qemu, kernel: kernel, initrd: initrd, append: append)
        }
        if mode == "snp", values["--json"] != nil || values["--idkey"] != nil || values["--authorkey"] != nil
            || (values["--vcpu-type"] ?? "").contains(",")
            || values["--vcpus"].flatMap(vcpuCounts).map({ $0.count > 1 }) == true {
            return try measureMatrix(values, kernel: kernel, initrd: initrd, append: append)
        }
        guard let vcpusText = values["--vcpus"] else { throw UsageError("missing --vcpus N in guest mode '\(mode)'") }
        let vcpus = PythonInteger(vcpusText, autoBase: false)!.exact!
        guard vcpus <= Int64(SNPGuestMeasurement.maximumVCPUs) else {
            throw UsageError("argument --vcpus: \(vcpusText) is more than the \(SNPGuestMeasurement.maximumVCPUs) vCPUs a KVM guest can have")
        }
        let vmmName = values["--vmm-type"] ?? "QEMU"
        guard let vmmType = SNPVMMType(rawValue: vmmName) else { throw UsageError("unknown VMM type '\(vmmName)'") }
        // cli.py get_vcpu_sig: family, then sig, then type; each only when its value is truthy.
        var signature: UInt64 = 0
        if let family = values["--vcpu-family"].flatMap({ PythonInteger($0, autoBase: false) }), !family.isZero {
            guard let model = values["--vcpu-model"].flatMap({ PythonInteger($0, autoBase: false)?.exact }),
                  let stepping = values["--vcpu-stepping"].flatMap({ PythonInteger($0, autoBase: false)?.exact })
            else { throw MeasureFailure("--vcpu-family needs --vcpu-model and --vcpu-stepping") }
            signature = SNPVCPUSignature.signature(family: family.exact!, model: model, stepping: stepping)
        } else if let sig = values["--vcpu-sig"].flatMap({ PythonInteger($0, autoBase: true) }), !sig.isZero {
            signature = sig.wrapped
        } else if let name = values["--vcpu-type"] {
            signature = SNPVCPUSignature.signature(named: name)!
        } else if vmmType == .qemu {
            throw UsageError("missing --vcpu-type or --vcpu-sig or --vcpu-family in guest mode '\(mode)'")
        }
        if mode == "seves" {
            return try measureSEV(values, vcpus: max(Int(vcpus), 0), signature: signature, vmmType: vmmType, kernel: kernel,
                                  initrd: initrd, append: append)
        }
        let guestFeatures = values["--guest-features"].map { PythonInteger($0, autoBase: true)!.wrapped } ?? 0x1

        let image = try OVMFImage(path: ovmfPath)
        var firmwareDigest: SHA384Digest?
        if let text = values["--snp-ovmf-hash"], !text.isEmpty {
            guard let bytes = Hex.decode(text), bytes.count == 48 else {
                throw MeasureFailure("--snp-ovmf-hash needs 96 hex digits (a 48-byte SHA-384 digest), got '\(text)'")
            }
            firmwareDigest = SHA384Digest(bytes: bytes)
        }
        var hashes: SEVKernelHashes?
        if let kernel {
            hashes = SEVKernelHashes(kernel: try FileBytes.read(kernel), initrd: try initrd.map { try FileBytes.read($0) },
                                     cmdline: append)
        }
        let measurement = SNPGuestMeasurement(vcpus: max(Int(vcpus), 0), vcpuSignature: signature, vmmType: vmmType,
                                              guestFeatures: guestFeatures, kernelHashes: hashes,
                                              firmwareDigest: firmwareDigest)
        let digest = try measurement.launchDigest(for: image)
        if values["--dump-vmsa"] != nil {
            for (index, page) in try measurement.vmsaPages(for: image).enumerated() {
                try writeFile("vmsa\(index).bin", page)
            }
        }
        printMeasurement(digest.bytes, label: "SEV_SNP guest measurement", values)
        return .success
    }

    /// The vCPU counts of a list or range ("1-16", "1,2,4", "2,8-10"); nil
    /// for a plain number or anything else.
    static func vcpuCounts(_ text: String) -> [Int]? {
        guard text.contains(",") || text.dropFirst().contains("-") else { return nil }
        var counts: [Int] = []
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let bounds = part.split(separator: "-", omittingEmptySubsequences: false)
            guard (1...2).contains(bounds.count), let low = Int(bounds[0]), let high = Int(bounds.last!),
                  1 <= low, low <= high, high <= SNPGuestMeasurement.maximumVCPUs else { return nil }
            counts += Array(low...high)
        }
        return counts
    }

    /// `--mode snp --igvm FILE`: the launch digest of an IGVM file's SEV-SNP
    /// directives as QEMU's loader launches them (`IGVMSNPLaunch`), KVM's
    /// rules applied unless `--no-check-kvm`. A malformed file or a rule
    /// broken is a usage error naming the header.
    static func measureIGVM(_ values: [String: String]) throws -> ExitCode {
        guard values["--mode"] == "snp", values["--ovmf"] == nil else {
            throw UsageError("--igvm is measured with --mode snp and without --ovmf")
        }
        let path = values["--igvm"]!
        let launch: IGVMSNPLaunch
        do {
            launch = try IGVMSNPLaunch(try IGVMFile(bytes: try FileBytes.read(path)),
                                       nativeZero: values["--native-zero"] != nil, checkKVM: values["--no-check-kvm"] == nil)
        } catch let error as IGVMError {
            throw UsageError("\(path): \(error)")
        }
        let digest = launch.launchDigest.bytes
        printMeasurement(digest, label: "SNP launch measurement", values)
        if let named = launch.idBlockDigest, named != digest {
            throw MeasureFailure("\(path): the SNP_ID_BLOCK names launch digest \(Hex.encode(named)), not the file's")
        }
        return .success
    }

    /// Reference values for an allow-list: one SNP measurement per vCPU
    /// count and vCPU type, the firmware hashed once and each combination
    /// chained on from its digest; `--json` gives one record per combination.
    static func measureMatrix(_ values: [String: String], kernel: String?, initrd: String?, append: String?) throws -> ExitCode {
        guard let text = values["--vcpus"] else { throw UsageError("missing --vcpus N in guest mode 'snp'") }
        let counts = vcpuCounts(text) ?? [Int(PythonInteger(text, autoBase: false)!.exact!)]
        guard let typeList = values["--vcpu-type"] else {
            throw UsageError("a measurement matrix takes --vcpu-type NAME[,NAME...]")
        }
        let types = typeList.split(separator: ",").map(String.init)
        let image = try OVMFImage(path: values["--ovmf"]!)
        let firmware = try SNPGuestMeasurement.firmwareDigest(of: image)
        var hashes: SEVKernelHashes?
        if let kernel {
            hashes = SEVKernelHashes(kernel: try FileBytes.read(kernel), initrd: try initrd.map { try FileBytes.read($0) },
                                     cmdline: append)
        }
        let guestFeatures = values["--guest-features"].map { PythonInteger($0, autoBase: true)!.wrapped } ?? 0x1
        // With keys, each record carries the ID block QEMU's id-block and id-auth take for it.
        var keys: (id: SNPSigningKey, author: SNPSigningKey)?
        if values["--idkey"] != nil || values["--authorkey"] != nil {
            guard let idKey = values["--idkey"], let authorKey = values["--authorkey"], values["--json"] != nil else {
                throw UsageError("ID blocks take --idkey PEM and --authorkey PEM together, with --json")
            }
            do { keys = (try SNPSigningKey(pemFile: idKey), try SNPSigningKey(pemFile: authorKey)) } catch {
                throw UsageError("\(error)")  // a key file that cannot be used is bad input, as in snpvmm id-block
            }
        }
        var records: [String] = []
        for type in types {
            for vcpus in counts {
                let measurement = SNPGuestMeasurement(vcpus: vcpus, vcpuSignature: SNPVCPUSignature.signature(named: type)!,
                                                      guestFeatures: guestFeatures, kernelHashes: hashes,
                                                      firmwareDigest: firmware)
                let digest = try measurement.launchDigest(for: image).bytes
                let text = values["--output-format"] == "base64" ? Base64.encode(digest) : Hex.encode(digest)
                var record = "{\"vcpus\": \(vcpus), \"vcpu_type\": \(jsonString(type)), \"measurement\": \(jsonString(text))"
                if let keys {
                    let block = SNPIDBlock(launchDigest: SHA384Digest(bytes: digest))
                    let auth = try SNPIDAuth(signing: block, idKey: keys.id, authorKey: keys.author)
                    record += ", \"id_block\": \"\(Base64.encode(block.bytes))\", \"id_auth\": \"\(Base64.encode(auth.bytes))\""
                        + ", \"id_key_hash\": \"\(Base64.encode(keys.id.publicKeyDigest.bytes))\""
                        + ", \"author_key\": \"\(Base64.encode(keys.author.publicKeyDigest.bytes))\""
                }
                records.append(values["--json"] != nil ? record + "}" : "\(vcpus) \(type) \(text)")
            }
        }
        print(values["--json"] != nil ? "[\n  " + records.joined(separator: ",\n  ") + "\n]" : records.joined(separator: "\n"))
        return .success
    }

    /// sev-snp-measure's `--mode sev` and `--mode seves`: SHA-256 over the
    /// firmware image, the kernel-hashes table and, for SEV-ES, one VMSA per
    /// vCPU (whose SEV features are 0: SNP's SNP_ACTIVE does not apply).
    static func measureSEV(_ values: [String: String], vcpus: Int, signature: UInt64, vmmType: SNPVMMType,
                           kernel: String?, initrd: String?, append: String?) throws -> ExitCode {
        let mode = values["--mode"]!
        if values["--dump-vmsa"] != nil, mode == "sev" { throw UsageError("--dump-vmsa is not availibe in the selected mode") }
        let image = try OVMFImage(path: values["--ovmf"]!)
        var hashes: SEVKernelHashes?
        if let kernel {
            guard let gpa = image.sevHashTableGPA, gpa != 0 else {
                throw MeasureFailure("Kernel specified but OVMF doesn't support kernel/initrd/cmdline measurement")
            }
            hashes = SEVKernelHashes(kernel: try FileBytes.read(kernel), initrd: try initrd.map { try FileBytes.read($0) },
                                     cmdline: append)
        }
        var vmsas: [[UInt8]] = []
        if mode == "seves" {
            vmsas = try SNPGuestMeasurement(vcpus: vcpus, vcpuSignature: signature, vmmType: vmmType, guestFeatures: 0)
                .vmsaPages(for: image)
            if values["--dump-vmsa"] != nil {
                for (index, page) in vmsas.enumerated() { try writeFile("vmsa\(index).bin", page) }
            }
        }
        let digest = SEVLaunchDigest.digest(firmware: image.bytes, kernelHashes: hashes, vmsas: vmsas)
        printMeasurement(digest, label: "\(mode == "sev" ? "SEV" : "SEV_ES") guest measurement", values)
        return .success
    }

    /// MRTD of a TDVF image.
    static func measureTDX(_ values: [String: String]) throws -> ExitCode {
        guard let path = values["--tdvf"] else { throw UsageError("the following arguments are required: --tdvf") }
        let image = try TDVFImage(bytes: try FileBytes.read(path))
        printMeasurement(image.mrtd.bytes, label: "TDX MRTD", values)
        return .success
    }

    /// The realm initial measurement of a direct kernel boot.
    static func measureCCA(_ values: [String: String]) throws -> ExitCode {
        let missing = ["--kernel", "--dtb", "--memory", "--num-bps", "--num-wps"].filter { values[$0] == nil }
        guard missing.isEmpty else { throw UsageError("the following arguments are required: \(missing.joined(separator: ", "))") }
        func number(_ flag: String, default value: UInt64? = nil) throws -> UInt64? {
            guard let text = values[flag] else { return value }
            guard let parsed = PythonInteger(text, autoBase: true), !parsed.negative, let exact = parsed.exact else {
                throw UsageError("argument \(flag): invalid value: '\(text)'")
            }
            return UInt64(exact)
        }
        func small(_ flag: String, default value: UInt32? = nil) throws -> UInt32? {
            guard let wide = try number(flag, default: value.map(UInt64.init)) else { return nil }
            guard let narrow = UInt32(exactly: wide) else { throw UsageError("argument \(flag): invalid value: '\(values[flag]!)'") }
            return narrow
        }
        guard let memoryText = values["--memory"], let memory = parseSize(memoryText) else {
            throw UsageError("argument --memory: invalid size: '\(values["--memory"]!)' (bytes, or a number with K, M or G)")
        }
        var sveVL: UInt32?
        if let bits = try small("--sve-vl"), bits != 0 {
            guard bits % 128 == 0, bits <= 2048 else { throw UsageError("argument --sve-vl: \(bits) is not a multiple of 128 up to 2048") }
            sveVL = bits / 128 - 1
        }
        let algorithm: CCAHashAlgorithm
        switch values["--hash-algo"] ?? "sha256" {
        case "sha256": algorithm = .sha256
        case "sha384": algorithm = .sha384
        case "sha512": algorithm = .sha512
        case let other: throw UsageError("argument --hash-algo: invalid choice: '\(other)' (choose from 'sha256', 'sha384', 'sha512')")
        }
        let parameters = CCARealmParameters(hashAlgorithm: algorithm, ipaBits: try small("--ipa-bits", default: 40)!,
                                            lpa2: values["--lpa2"] != nil, sveVL: sveVL,
                                            breakpoints: try small("--num-bps")!, watchpoints: try small("--num-wps")!,
                                            pmuCounters: try small("--pmu-num-ctrs"))
        if let problem = parameters.problems.first { throw UsageError("the RMM refuses a realm with \(problem)") }
        let boot = CCALinuxBoot(parameters: parameters, ramBase: try number("--ram-base", default: CCALinuxBoot.defaultRAMBase)!,
                                ramSize: memory, kernel: try FileBytes.read(values["--kernel"]!),
                                initrd: try values["--initrd"].map { try FileBytes.read($0) },
                                dtb: try FileBytes.read(values["--dtb"]!))
        printMeasurement(try boot.realmInitialMeasurement(), label: "CCA realm initial measurement", values)
        return .success
    }

    /// Prints a measurement as sev-snp-measure does: hex or base64, with a
    /// "Calculated … measurement:" prefix under -v.
    static func printMeasurement(_ bytes: [UInt8], label: String, _ values: [String: String]) {
        let text = values["--output-format"] == "base64" ? Base64.encode(bytes) : Hex.encode(bytes)
        print(values["--verbose"] != nil ? "Calculated \(label): \(text)" : text)
    }

    static func usageError(_ message: String) -> ExitCode {
        var standardError = StandardError()
        print("snpvmm measure: error: \(message)", to: &standardError)
        return .usage
    }

    static func runtimeError(_ message: String) -> ExitCode {
        var standardError = StandardError()
        print("Error: \(message)", to: &standardError)
        return .failure
    }


    /// A size in bytes with an optional K, M or G (binary) suffix.
    static func parseSize(_ text: String) -> UInt64? { SizeArgument(text).value }

    static func writeFile(_ path: String, _ bytes: [UInt8]) throws(MeasureFailure) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw MeasureFailure("cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count else { throw MeasureFailure("cannot write \(path): \(String(cString: strerror(errno)))") }
    }
}

/// An input that cannot be measured: "Error: …", exit status 1.
struct MeasureFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// An integer parsed as Python's `int(text)` or `int(text, 0)` parses it:
/// surrounding whitespace, a sign, `_` between digits, and with base 0 the
/// 0x/0o/0b prefixes (and no leading zeros on a decimal).
struct PythonInteger {
    /// The value modulo 2^64, as ctypes stores it in a u64 field.
    var wrapped: UInt64
    /// The value, where it fits in 64 bits.
    var exact: Int64?
    var negative: Bool
    /// Python's truth value is false exactly for zero.
    var isZero: Bool

    init?(_ text: String, autoBase: Bool) {
        var characters = Substring(text.trimmingWhitespace())
        negative = characters.first == "-"
        if characters.first == "-" || characters.first == "+" { characters = characters.dropFirst() }
        var radix: UInt64 = 10
        var allowLeadingUnderscore = false
        if autoBase, characters.count >= 2, characters.first == "0",
           let base = ["x": 16, "o": 8, "b": 2][characters.dropFirst().first!.lowercased()] {
            radix = UInt64(base)
            characters = characters.dropFirst(2)
            allowLeadingUnderscore = true
        }
        guard !characters.isEmpty, characters.last != "_", allowLeadingUnderscore || characters.first != "_",
              !characters.contains("__") else { return nil }
        var magnitude: UInt64 = 0, exactMagnitude: UInt64? = 0, sawNonZero = false, digitCount = 0
        for character in characters where character != "_" {
            guard let digit = character.hexDigitValue, UInt64(digit) < radix else { return nil }
            magnitude = magnitude &* radix &+ UInt64(digit)
            if let current = exactMagnitude {
                let (product, overflow1) = current.multipliedReportingOverflow(by: radix)
                let (sum, overflow2) = product.addingReportingOverflow(UInt64(digit))
                exactMagnitude = overflow1 || overflow2 ? nil : sum
            }
            sawNonZero = sawNonZero || digit != 0
            digitCount += 1
        }
        guard digitCount > 0 else { return nil }
        // int(x, 0) rejects "010": a decimal with a leading zero must be all zeros.
        if autoBase, radix == 10, characters.first == "0", sawNonZero { return nil }
        isZero = !sawNonZero
        wrapped = negative ? 0 &- magnitude : magnitude
        if let value = exactMagnitude {
            exact = negative ? (value <= UInt64(Int64.max) + 1 ? Int64(truncatingIfNeeded: 0 &- value) : nil)
                             : (value <= UInt64(Int64.max) ? Int64(value) : nil)
        }
    }
}

extension String {
    func trimmingWhitespace() -> String {
        let scalars = unicodeScalars
        guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }) else { return "" }
        let last = scalars.lastIndex(where: { !$0.properties.isWhitespace })!
        return String(scalars[first...last])
    }
}

/// The command line of `snpvmm measure`, parsed with argparse's rules
/// (Python 3.11 `argparse`, as sev-snp-measure uses it): long options by
/// unique prefix, `--opt value` or `--opt=value`, a value may not look like
/// an option unless it is a negative number or contains a space, the last
/// repeat wins, and conversion errors name the option.
struct MeasureArguments {
    typealias Option = OptionSpec

    static let modes = ["sev", "seves", "snp", "snp:ovmf-hash", "tdx", "cca"]

    static func choices(_ allowed: [String]) -> @Sendable (String) -> String? {
        { value in
            allowed.contains(value) ? nil
                : "invalid choice: '\(value)' (choose from \(allowed.map { "'\($0)'" }.joined(separator: ", ")))"
        }
    }

    static func integer(_ typeName: String, autoBase: Bool, fitIn64: Bool = false) -> @Sendable (String) -> String? {
        { value in
            guard let parsed = PythonInteger(value, autoBase: autoBase), !fitIn64 || parsed.exact != nil else {
                return "invalid \(typeName) value: '\(value)'"
            }
            return nil
        }
    }

    let options: [Option] = [
        Option(names: ["-h", "--help"], takesValue: false),
        Option(names: ["--version"], takesValue: false),
        Option(names: ["-v", "--verbose"], takesValue: false),
        Option(names: ["--mode"], takesValue: true, check: choices(modes)),
        Option(names: ["--vcpus"], takesValue: true, check: { value in
            // An extension of sev-snp-measure's flag: a list or range ("1-16", "1,2,4") gives a matrix.
            MeasureCommand.vcpuCounts(value) != nil ? nil : integer("int", autoBase: false, fitIn64: true)(value)
        }),
        Option(names: ["--vcpu-type"], takesValue: true, check: { value in
            let names = value.split(separator: ",").map(String.init)
            return names.count > 1 && names.allSatisfy({ SNPVCPUSignature.signature(named: $0) != nil }) ? nil
                : choices(SNPVCPUSignature.types.map(\.name))(value)
        }),
        Option(names: ["--vcpu-sig"], takesValue: true, check: integer("auto_base_int", autoBase: true)),
        Option(names: ["--vcpu-family"], takesValue: true, check: integer("int", autoBase: false, fitIn64: true)),
        Option(names: ["--vcpu-model"], takesValue: true, check: integer("int", autoBase: false, fitIn64: true)),
        Option(names: ["--vcpu-stepping"], takesValue: true, check: integer("int", autoBase: false, fitIn64: true)),
        Option(names: ["--vmm-type"], takesValue: true),
        Option(names: ["--ovmf"], takesValue: true),
        Option(names: ["--kernel"], takesValue: true),
        Option(names: ["--initrd"], takesValue: true),
        Option(names: ["--append"], takesValue: true),
        Option(names: ["--guest-features"], takesValue: true, check: integer("<lambda>", autoBase: true)),
        Option(names: ["--output-format"], takesValue: true, check: choices(["hex", "base64"])),
        Option(names: ["--snp-ovmf-hash"], takesValue: true),
        Option(names: ["--dump-vmsa"], takesValue: false),
        Option(names: ["--svsm"], takesValue: true),
        Option(names: ["--vars-size"], takesValue: true, check: integer("int", autoBase: false)),
        Option(names: ["--vars-file"], takesValue: true),
        Option(names: ["--tdvf"], takesValue: true),
        Option(names: ["--dtb"], takesValue: true),
        Option(names: ["--memory"], takesValue: true),
        Option(names: ["--ram-base"], takesValue: true),
        Option(names: ["--hash-algo"], takesValue: true),
        Option(names: ["--ipa-bits"], takesValue: true),
        Option(names: ["--sve-vl"], takesValue: true),
        Option(names: ["--num-bps"], takesValue: true),
        Option(names: ["--num-wps"], takesValue: true),
        Option(names: ["--pmu-num-ctrs"], takesValue: true),
        Option(names: ["--lpa2"], takesValue: false),
        Option(names: ["--json"], takesValue: false),
        Option(names: ["--idkey"], takesValue: true),
        Option(names: ["--igvm"], takesValue: true),
        Option(names: ["--native-zero"], takesValue: false),
        Option(names: ["--no-check-kvm"], takesValue: false),
        Option(names: ["--authorkey"], takesValue: true),
    ]

    /// Parses `arguments` into option values keyed by each option's long name,
    /// then makes sev-snp-measure's own checks: the required options, then
    /// the arguments nothing took.
    func parse(_ arguments: [String]) throws(UsageError) -> [String: String] {
        let parser = ArgumentParser(options: options, dialect: .argparse, exclusive: [("--vars-size", "--vars-file")])
        let parsed = try parser.parse(arguments)
        var values = parsed.values.compactMapValues(\.last)
        if values["--help"] != nil || values["--version"] != nil { return values }
        var missing = [String]()
        if values["--mode"] == nil { missing.append("--mode") }
        let mode = values["--mode"]
        if values["--ovmf"] == nil, values["--igvm"] == nil || mode != "snp",
            mode == nil || ["sev", "seves", "snp", "snp:ovmf-hash"].contains(mode!) {
            if mode != nil || (values["--tdvf"] == nil && values["--dtb"] == nil) { missing.append("--ovmf") }
        }
        if !missing.isEmpty { throw UsageError("the following arguments are required: \(missing.joined(separator: ", "))") }
        if !parsed.unrecognized.isEmpty {
            throw UsageError("unrecognized arguments: \(parsed.unrecognized.joined(separator: " "))")
        }
        values.removeValue(forKey: "")
        return values
    }
}
