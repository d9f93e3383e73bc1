/// Populate fills a confidential guest's private memory from a launch plan
/// through the typed KVM objects of `GuestMemfd`, and computes the launch
/// measurements the platform will report.
import GuestMemfd
