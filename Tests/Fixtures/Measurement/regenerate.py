#!/usr/bin/env python3
"""Regenerates the measurement test vectors in this directory.

  snp-vectors.json  sev-snp-measure 0.0.13 (pip install sev-snp-measure==0.0.13)
                    run on Debian's OVMF images and on images derived from them
                    by the byte patches listed in the file.
  snp-id-blocks.json  snp-create-id-block (same package) on the test keys in
                    inputs/.
  tdx-vectors.json  MRTD from td-shim's td_shim_tee_info_hash.py, when
                    TD_SHIM_TEE_INFO_HASH names a copy of it; otherwise the
                    existing values are kept.
  cca-vectors.json  the realm initial measurement from the Python model below,
                    written from TF-RMM's rim.c and measurement_descs.h.

The small inputs in inputs/ are generated deterministically if missing. The
OVMF images are checked against the SHA-256 values in README.md; --fetch
downloads them with apt-get (bookworm from the system's sources, trixie and sid
through a private apt configuration) and extracts them with dpkg-deb.
"""
import hashlib, json, os, struct, subprocess, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGES = {
    "OVMF/bookworm-OVMF.fd": ("ovmf", "2022.11-6+deb12u2", "bookworm", "usr/share/ovmf/OVMF.fd",
                              "7b456907dd0786d415999e801a1ac4637b8ed4d7cf5378cfc6edbe5e574dd773"),
    "OVMF/trixie-OVMF.fd": ("ovmf", "2025.02-8+deb13u1", "trixie", "usr/share/ovmf/OVMF.fd",
                            "14954040cc754ade0c625ac3470ea46d4c14318b5b1396de4ef77090203d76db"),
    "OVMF/sid-OVMF.amdsev.fd": ("ovmf-amdsev", "2026.08+ds-2", "sid", "usr/share/ovmf/OVMF.amdsev.fd",
                                "3e4fd0b3fe3b2dbe481c3d9e99418a034174f26cbe1f55aa212b0f18c12d2d6f"),
}

# Images derived from bookworm's OVMF.fd (0x200000 bytes) by patching bytes.
DERIVED = {
    # SEV metadata item 2 (SNP_SECRETS) gets type 5, which no tool knows.
    "unknown-section-type.fd": {"base": "OVMF/bookworm-OVMF.fd", "patches": [[0x1FFB04, "05000000"]]},
    # The footer-table entry ending at 0x1fffbc claims 4 bytes, less than its 18-byte trailer.
    "damaged-guid-table.fd": {"base": "OVMF/bookworm-OVMF.fd", "patches": [[0x1FFFA6, "0400"]]},
    # The OVMF_SEV_META_DATA GUID altered: the image has no SEV metadata.
    "no-sev-metadata.fd": {"base": "OVMF/bookworm-OVMF.fd", "patches": [[0x1FFF74, "67"]]},
    # "ASEV" becomes "XSEV".
    "wrong-metadata-signature.fd": {"base": "OVMF/bookworm-OVMF.fd", "patches": [[0x1FFAD4, "58"]]},
}

B, T, S = "OVMF/bookworm-OVMF.fd", "OVMF/trixie-OVMF.fd", "OVMF/sid-OVMF.amdsev.fd"
K, I = "inputs/kernel.bin", "inputs/initrd.bin"
SNP_CASES = [
    ("bookworm-epyc-1", B, ["--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC"]),
    ("bookworm-milan-4-base64", B, ["--mode", "snp", "--vcpus", "4", "--vcpu-type", "EPYC-Milan", "--output-format", "base64"]),
    ("bookworm-sig-ec2-features", B, ["--mode", "snp", "--vcpus", "2", "--vcpu-sig", "0xA10F10", "--vmm-type", "ec2",
                                      "--guest-features", "0x21"]),
    ("bookworm-rome-gce-3", B, ["--mode", "snp", "--vcpus", "3", "--vcpu-type", "EPYC-Rome", "--vmm-type", "gce"]),
    ("bookworm-family-verbose", B, ["--mode", "snp", "--vcpus", "2", "--vcpu-family", "25", "--vcpu-model", "17",
                                    "--vcpu-stepping", "0", "-v"]),
    ("bookworm-ovmf-hash", B, ["--mode", "snp:ovmf-hash"]),
    ("bookworm-seeded-by-ovmf-hash", B, ["--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC", "--snp-ovmf-hash", "@ovmf-hash"]),
    ("bookworm-kernel-without-hashes-section", B, ["--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC", "--kernel", K]),
    ("sid-genoa-1", S, ["--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-Genoa"]),
    ("sid-turin-8-kernel-initrd-append", S, ["--mode", "snp", "--vcpus", "8", "--vcpu-type", "EPYC-Turin", "--kernel", K,
                                             "--initrd", I, "--append", "console=ttyS0 root=/dev/vda1"]),
    ("sid-milan-2-kernel-only", S, ["--mode", "snp", "--vcpus", "2", "--vcpu-type", "EPYC-Milan", "--kernel", K]),
    ("sid-ec2-kernel", S, ["--mode", "snp", "--vcpus", "2", "--vmm-type", "ec2", "--kernel", K, "--append", "quiet"]),
    ("sid-append-value-starting-with-dash", S, ["--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC", "--kernel", K,
                                                "--append", "-x root=/dev/sda"]),
    ("usage-append-value-looks-like-an-option", S, ["--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC", "--kernel", K,
                                                    "--append", "-x"]),
    ("sid-gce-4", S, ["--mode", "snp", "--vcpus", "4", "--vcpu-type", "EPYC-Milan", "--vmm-type", "gce"]),
    ("sid-ovmf-hash", S, ["--mode", "snp:ovmf-hash"]),
    ("usage-missing-vcpus", B, ["--mode", "snp", "--vcpu-type", "EPYC"]),
    ("usage-unknown-vmm-type", B, ["--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC", "--vmm-type", "xen"]),
    ("usage-initrd-without-kernel", B, ["--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC", "--initrd", I]),
    ("usage-missing-vcpu-type", B, ["--mode", "snp", "--vcpus", "1"]),
    ("unknown-section-type", "unknown-section-type.fd", ["--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC"]),
    ("damaged-guid-table", "damaged-guid-table.fd", ["--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC"]),
    ("no-sev-metadata", "no-sev-metadata.fd", ["--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC"]),
    ("no-sev-metadata-with-kernel", "no-sev-metadata.fd", ["--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC", "--kernel", K]),
    ("wrong-metadata-signature", "wrong-metadata-signature.fd", ["--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC"]),
    # Legacy SEV (the firmware image and the hashes table) and SEV-ES (and then the VMSAs).
    ("sev-bookworm", B, ["--mode", "sev"]),
    ("sev-bookworm-verbose-base64", B, ["--mode", "sev", "-v", "--output-format", "base64"]),
    ("sev-sid-kernel-initrd-append", S, ["--mode", "sev", "--kernel", K, "--initrd", I, "--append", "console=ttyS0"]),
    ("sev-bookworm-kernel-without-hashes-table", B, ["--mode", "sev", "--kernel", K]),
    ("seves-bookworm-epyc-1", B, ["--mode", "seves", "--vcpus", "1", "--vcpu-type", "EPYC"]),
    ("seves-bookworm-milan-4-verbose", B, ["--mode", "seves", "--vcpus", "4", "--vcpu-type", "EPYC-Milan", "-v"]),
    ("seves-sid-rome-2-kernel", S, ["--mode", "seves", "--vcpus", "2", "--vcpu-type", "EPYC-Rome", "--kernel", K,
                                    "--append", "quiet"]),
    ("seves-sid-ec2-3", S, ["--mode", "seves", "--vcpus", "3", "--vmm-type", "ec2"]),
    ("usage-seves-missing-vcpus", B, ["--mode", "seves", "--vcpu-type", "EPYC"]),
]


def deterministic_bytes(label, count):
    out, counter = bytearray(), 0
    while len(out) < count:
        out += hashlib.sha256(f"{label}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:count])


def make_inputs():
    os.makedirs(os.path.join(HERE, "inputs"), exist_ok=True)
    image = bytearray(deterministic_bytes("arm64 Image", 40960))
    # arm64 Image header: text_offset 0, image_size 0x30000, flags 0xa, magic "ARM\x64" at 0x38.
    struct.pack_into("<QQQ", image, 8, 0, 0x30000, 0xA)
    image[0x38:0x3C] = b"ARM\x64"
    dtb = bytearray(deterministic_bytes("dtb", 5000))
    dtb[0:4] = bytes.fromhex("d00dfeed")
    files = {"kernel.bin": deterministic_bytes("kernel", 24576 + 123), "initrd.bin": deterministic_bytes("initrd", 10000),
             "Image": bytes(image), "virt.dtb": bytes(dtb)}
    for name, data in files.items():
        path = os.path.join(HERE, "inputs", name)
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(data)


def fetch_images():
    for rel, (package, version, suite, member, _) in IMAGES.items():
        work = tempfile.mkdtemp()
        apt = []
        if suite != "bookworm":
            lists = os.path.join(work, "lists")
            os.makedirs(os.path.join(lists, "partial"))
            with open(os.path.join(work, "sources.list"), "w") as f:
                f.write(f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian {suite} main\n")
            apt = ["-o", f"Dir::Etc::SourceList={work}/sources.list", "-o", "Dir::Etc::SourceParts=/dev/null",
                   "-o", f"Dir::State::Lists={lists}", "-o", f"Dir::Cache={work}/cache"]
            subprocess.run(["apt-get", *apt, "update"], check=True)
        subprocess.run(["apt-get", *apt, "download", f"{package}={version}"], check=True, cwd=work)
        deb = next(name for name in os.listdir(work) if name.endswith(".deb"))
        subprocess.run(["dpkg-deb", "-x", deb, "root"], check=True, cwd=work)
        os.makedirs(os.path.join(HERE, "OVMF"), exist_ok=True)
        with open(os.path.join(work, "root", member), "rb") as src, open(os.path.join(HERE, rel), "wb") as dst:
            dst.write(src.read())


def check_images():
    for rel, (*_, digest) in IMAGES.items():
        with open(os.path.join(HERE, rel), "rb") as f:
            actual = hashlib.sha256(f.read()).hexdigest()
        if actual != digest:
            sys.exit(f"{rel}: SHA-256 {actual}, expected {digest}")


def derive(work):
    for name, spec in DERIVED.items():
        data = bytearray(open(os.path.join(HERE, spec["base"]), "rb").read())
        for offset, patch in spec["patches"]:
            data[offset:offset + len(patch) // 2] = bytes.fromhex(patch)
        with open(os.path.join(work, name), "wb") as f:
            f.write(data)


def snp_vectors():
    work = tempfile.mkdtemp()
    derive(work)
    ovmf_hashes, cases = {}, []
    for name, image, args in SNP_CASES:
        path = os.path.join(work, image) if image in DERIVED else os.path.join(HERE, image)
        if "@ovmf-hash" in args:
            args = [ovmf_hashes[image] if a == "@ovmf-hash" else a for a in args]
        run = subprocess.run(["sev-snp-measure", *args, "--ovmf", path], cwd=HERE, capture_output=True, text=True)
        if args[1] == "snp:ovmf-hash":
            ovmf_hashes[image] = run.stdout.strip()
        cases.append({"name": name, "image": image, "args": args, "status": run.returncode, "stdout": run.stdout,
                      "stderrLastLine": run.stderr.strip().splitlines()[-1] if run.stderr.strip() else ""})
    version = subprocess.run(["sev-snp-measure", "--version"], capture_output=True, text=True).stdout.strip()
    return {"generator": version, "derivedImages": DERIVED, "cases": cases}


# The firmware-launch matrix: each Debian image x vCPU count 1-16 x each vCPU
# type name sev-snp-measure takes, with and without a measured kernel where
# the image has a kernel-hashes section (sid's ovmf is an empty transitional
# package, so sid contributes ovmf-amdsev only).
MATRIX_VCPUS = list(range(1, 17))


def matrix_types():
    from sevsnpmeasure import vcpu_types
    return list(vcpu_types.CPU_SIGS.keys())


def snp_matrix():
    from concurrent.futures import ThreadPoolExecutor
    jobs = []
    for image, boots in [(B, [[]]), (T, [[]]),
                         (S, [[], ["--kernel", K], ["--kernel", K, "--initrd", I, "--append", "console=ttyS0"]])]:
        for vcpus in MATRIX_VCPUS:
            for vcpu_type in matrix_types():
                for boot in boots:
                    jobs.append((image, ["--mode", "snp", "--vcpus", str(vcpus), "--vcpu-type", vcpu_type, *boot]))

    def measure(job):
        image, args = job
        run = subprocess.run(["sev-snp-measure", *args, "--ovmf", os.path.join(HERE, image)], cwd=HERE,
                             capture_output=True, text=True, check=True)
        return {"image": image, "args": args, "measurement": run.stdout.strip()}

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        cases = list(pool.map(measure, jobs))
    version = subprocess.run(["sev-snp-measure", "--version"], capture_output=True, text=True).stdout.strip()
    return {"generator": version, "cases": cases}

# ID blocks from sev-snp-measure's snp-create-id-block for committed test keys
# (inputs/id-key.pem SEC1 P-384, inputs/author-key.pem PKCS#8 P-384,
# inputs/p256-key.pem P-256, made once with `openssl genpkey`; test keys only).
# The ID block and key digests are deterministic; the signatures are not
# (ECDSA draws a fresh nonce), so tests verify them rather than compare them.
ID_BLOCK_CASES = [
    ("first matrix measurement", lambda c: True, "id-key.pem", "author-key.pem"),
    ("kernel-hashes measurement", lambda c: "--initrd" in c["args"], "id-key.pem", "author-key.pem"),
    ("keys swapped", lambda c: True, "author-key.pem", "id-key.pem"),
]


def id_block_vectors():
    import base64
    matrix = json.load(open(os.path.join(HERE, "snp-firmware-matrix.json")))["cases"]
    cases = []
    for name, pick, idkey, authorkey in ID_BLOCK_CASES:
        measurement = base64.b64encode(bytes.fromhex(next(c for c in matrix if pick(c))["measurement"])).decode()
        args = ["--measurement", measurement, "--idkey", "inputs/" + idkey, "--authorkey", "inputs/" + authorkey]
        run = subprocess.run(["snp-create-id-block", *args], cwd=HERE, capture_output=True, text=True, check=True)
        cases.append({"name": name, "args": args, "stdout": run.stdout})
    run = subprocess.run(["snp-create-id-block", "--measurement", base64.b64encode(bytes(48)).decode(),
                          "--idkey", "inputs/p256-key.pem", "--authorkey", "inputs/author-key.pem"],
                         cwd=HERE, capture_output=True, text=True)
    wrong = {"args": run.args[1:], "status": run.returncode,
             "stderrLastLine": run.stderr.strip().splitlines()[-1] if run.stderr.strip() else ""}
    version = subprocess.run(["sev-snp-measure", "--version"], capture_output=True, text=True).stdout.strip()
    return {"generator": version + " snp-create-id-block", "cases": cases, "wrongCurve": wrong}


def tdx_vectors():
    path = os.path.join(HERE, "tdx-vectors.json")
    existing = json.load(open(path)) if os.path.exists(path) else None
    tool = os.environ.get("TD_SHIM_TEE_INFO_HASH")
    if not tool:
        if existing is None:
            sys.exit("set TD_SHIM_TEE_INFO_HASH to td-shim's td_shim_tee_info_hash.py to create tdx-vectors.json")
        return existing
    cases = []
    for image in IMAGES:
        run = subprocess.run([sys.executable, tool, "--image", os.path.join(HERE, image), "--log-level", "off"],
                             capture_output=True, text=True, check=True)
        cases.append({"image": image, "mrtd": run.stdout.strip()})
    return {"generator": "td-shim td-shim-tools/src/bin/td-shim-tee-info-hash/td_shim_tee_info_hash.py", "cases": cases}


# --- CCA realm initial measurement model (TF-RMM app/attestation/rmm_stub/src/rim.c) ---
HASHES = {"sha256": (0, hashlib.sha256), "sha512": (1, hashlib.sha512), "sha384": (2, hashlib.sha384)}


def cca_rim(algo, ipa_bits, bps, wps, pmu, sve_vl_field, lpa2, ram_base, ram_size, kernel, initrd, dtb):
    code, h = HASHES[algo]
    params = bytearray(4096)
    flags = (1 if lpa2 else 0) | (2 if sve_vl_field is not None else 0) | (4 if pmu is not None else 0)
    # num_bps and num_wps hold the counts minus one (TF-RMM get_feature_register_0, validate_realm_params).
    struct.pack_into("<QIxxxxIxxxxIxxxxIxxxxIxxxxB", params, 0, flags, ipa_bits, sve_vl_field or 0, bps - 1, wps - 1,
                     pmu or 0, code)
    rim = h(params).digest()

    def extend_data(rim, ipa, content):
        desc = bytearray(256)
        struct.pack_into("<BxxxxxxxQ", desc, 0, 0, 256)
        desc[0x10:0x10 + len(rim)] = rim
        struct.pack_into("<QQ", desc, 0x50, ipa, 1)
        desc[0x60:0x60 + len(content)] = content
        return h(desc).digest()

    def load(rim, data, at):
        start = at & ~0xFFF
        padded = bytes(at - start) + data
        padded += bytes(-len(padded) % 4096)
        for off in range(0, len(padded), 4096):
            rim = extend_data(rim, start + off, h(padded[off:off + 4096]).digest())
        return rim

    text_offset, image_size = struct.unpack_from("<QQ", kernel, 8)
    kernel_size = max(image_size, len(kernel)) if image_size else len(kernel)
    kernel_at = ram_base + text_offset
    initrd_at = max(ram_base + min(ram_size // 2, 128 << 20), kernel_at + kernel_size)
    initrd_at = (initrd_at + 0xFFF) & ~0xFFF
    dtb_at = (initrd_at + (len(initrd) if initrd else 0) + 0x1FFFFF) & ~0x1FFFFF
    rim = load(rim, kernel, kernel_at)
    if initrd:
        rim = load(rim, initrd, initrd_at)
    rim = load(rim, dtb, dtb_at)
    rec = bytearray(4096)
    struct.pack_into("<Q", rec, 0, 1)
    struct.pack_into("<Q", rec, 0x200, kernel_at)
    struct.pack_into("<8Q", rec, 0x300, dtb_at, 0, 0, 0, 0, 0, 0, 0)
    desc = bytearray(256)
    struct.pack_into("<BxxxxxxxQ", desc, 0, 1, 256)
    desc[0x10:0x10 + len(rim)] = rim
    content = h(rec).digest()
    desc[0x50:0x50 + len(content)] = content
    return h(desc).digest()


CCA_CASES = [
    ("sha256-initrd", ["--hash-algo", "sha256", "--memory", "512M", "--num-bps", "6", "--num-wps", "4", "--initrd", I]),
    ("sha512-sve-pmu-lpa2", ["--hash-algo", "sha512", "--memory", "1G", "--num-bps", "2", "--num-wps", "2",
                             "--ipa-bits", "48", "--sve-vl", "512", "--pmu-num-ctrs", "6", "--lpa2", "--initrd", I]),
    ("sha384-small-ram-no-initrd", ["--hash-algo", "sha384", "--memory", "128M", "--num-bps", "6", "--num-wps", "4",
                                    "--ram-base", "0x80000000"]),
]


def cca_vectors():
    read = lambda rel: open(os.path.join(HERE, rel), "rb").read()
    cases = []
    for name, args in CCA_CASES:
        opts = dict(zip(args[::2], args[1::2])) if "--lpa2" not in args else None
        if opts is None:
            rest = [a for a in args if a != "--lpa2"]
            opts = dict(zip(rest[::2], rest[1::2]))
        size = opts["--memory"]
        ram_size = int(size[:-1]) << {"K": 10, "M": 20, "G": 30}[size[-1]]
        sve = int(opts["--sve-vl"]) // 128 - 1 if "--sve-vl" in opts else None
        rim = cca_rim(opts.get("--hash-algo", "sha256"), int(opts.get("--ipa-bits", "40")), int(opts["--num-bps"]),
                      int(opts["--num-wps"]), int(opts["--pmu-num-ctrs"]) if "--pmu-num-ctrs" in opts else None, sve,
                      "--lpa2" in args, int(opts.get("--ram-base", "0x40000000"), 0), ram_size, read("inputs/Image"),
                      read(opts["--initrd"]) if "--initrd" in opts else None, read("inputs/virt.dtb"))
        cases.append({"name": name, "args": ["--mode", "cca", "--kernel", "inputs/Image", "--dtb", "inputs/virt.dtb", *args],
                      "rim": rim.hex()})
    return {"generator": "regenerate.py cca_rim (model of TF-RMM rim.c, RMM v2.0)", "cases": cases}


def write(name, value):
    with open(os.path.join(HERE, name), "w") as f:
        json.dump(value, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    if "--fetch" in sys.argv:
        fetch_images()
    check_images()
    make_inputs()
    write("snp-vectors.json", snp_vectors())
    write("snp-firmware-matrix.json", snp_matrix())
    write("snp-id-blocks.json", id_block_vectors())
    write("tdx-vectors.json", tdx_vectors())
    write("cca-vectors.json", cca_vectors())
