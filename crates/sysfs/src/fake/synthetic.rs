//! A synthetic host of many PCI functions, for benchmarks and scale tests.

use crate::address::PciAddress;

use super::FakeKernelBuilder;
use super::spec::PciSpec;

/// Functions per bus: 32 slots of four functions.
const PER_BUS: usize = 128;
/// Buses per domain (bus 0 is left to the root complex).
const BUSES: usize = 255;

impl FakeKernelBuilder {
    /// Adds `devices` Intel 82574L functions (`8086:10d3`, class 0x020000), four per slot
    /// like multi-function cards, 128 per bus from bus 1, continuing in the next PCI domain
    /// after bus 0xff. Each slot's four functions share one IOMMU group (`devices / 4`
    /// groups); NUMA node alternates by bus; each has one 128 KiB BAR. A third are on
    /// `e1000e`, a third on `vfio-pci`, a third unbound. This is the tree of the inventory
    /// benchmarks (`host ls` against `lspci` at 1,000 to 50,000 devices).
    #[must_use]
    pub fn synthetic_pci(mut self, devices: usize) -> Self {
        for i in 0..devices {
            let bus_index = i / PER_BUS;
            let domain = u16::try_from(bus_index / BUSES).unwrap_or(u16::MAX);
            let bus = u8::try_from(1 + bus_index % BUSES).unwrap_or(u8::MAX);
            let slot = u8::try_from((i / 4) % 32).unwrap_or(0);
            let function = u8::try_from(i % 4).unwrap_or(0);
            let Ok(address) = PciAddress::new(domain, bus, slot, function) else {
                continue;
            };
            let group = u32::try_from(i / 4).unwrap_or(u32::MAX);
            let start = 0xe000_0000 + (u64::try_from(i).unwrap_or(0) << 17);
            let spec = PciSpec::new(&address.to_string(), 0x8086, 0x10d3)
                .class(0x02_0000)
                .iommu_group(group)
                .numa_node(i32::from(bus % 2))
                .bar(0, start, 128 << 10);
            self = self.pci(match i % 3 {
                0 => spec.driver("e1000e"),
                1 => spec.driver("vfio-pci"),
                _ => spec.unbound(),
            });
        }
        self
    }
}
