// swift-tools-version:6.0
import PackageDescription

// Layers, bottom to top:
//   CKVMHeaders  C shim: the KVM uAPI this project needs, with pinned numbers
//   GuestMemfd   typed KVM objects over one kernel seam (real /dev/kvm or a test double)
//   LaunchMeasurement  SHA-384 and the SNP, TDX and CCA launch measurements; no KVM
//   Populate     launch plans, population policies and the population engine
//   KVMFake      the test double: an in-memory KVM with emulated platform firmware
//   VMMCore      the VMM's machinery: image loaders, guest layout, devices, Machine and its run loop
//   snpvmm       the command layer
let package = Package(
    name: "snpvmm",
    products: [
        // The uAPI structs and request codes, for an embedder's own tests.
        .library(name: "CKVMHeaders", targets: ["CKVMHeaders"]),
        .library(name: "GuestMemfd", targets: ["GuestMemfd"]),
        .library(name: "LaunchMeasurement", targets: ["LaunchMeasurement"]),
        .library(name: "Populate", targets: ["Populate"]),
        // A test double for embedders' test targets: an in-memory KVM with
        // emulated SEV-SNP, TDX and CCA firmware, and a fault injector.
        .library(name: "KVMFake", targets: ["KVMFake"]),
        .library(name: "VMMCore", targets: ["VMMCore"]),
        .executable(name: "snpvmm", targets: ["snpvmm"]),
    ],
    targets: [
        .target(name: "CKVMHeaders"),
        .systemLibrary(
            name: "CLibcrypto",
            pkgConfig: "libcrypto",
            providers: [.apt(["libssl-dev"])]
        ),
        .target(name: "GuestMemfd", dependencies: ["CKVMHeaders"]),
        .target(name: "LaunchMeasurement", dependencies: ["CLibcrypto"]),
        .target(name: "Populate", dependencies: ["GuestMemfd", "LaunchMeasurement"]),
        .target(name: "KVMFake", dependencies: ["GuestMemfd", "CKVMHeaders", "CLibcrypto"]),
        .target(name: "VMMCore", dependencies: ["CKVMHeaders", "GuestMemfd", "LaunchMeasurement", "Populate"]),
        .executableTarget(name: "snpvmm", dependencies: ["GuestMemfd", "LaunchMeasurement", "Populate", "KVMFake", "VMMCore"]),
        // Compiled with the package: a launch on each emulated platform through the public products only.
        .executableTarget(name: "populate-example", dependencies: ["GuestMemfd", "LaunchMeasurement", "Populate", "KVMFake"],
                          path: "Examples/LaunchOnFake"),
        .target(name: "Fixtures", path: "Tests/Fixtures", exclude: ["README.md", "Guests", "Measurement", "build-guests.sh"]),
        .testTarget(
            name: "PopulateTests",
            dependencies: ["GuestMemfd", "LaunchMeasurement", "Populate", "KVMFake", "VMMCore", "Fixtures", "CKVMHeaders", "snpvmm", "populate-example"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
