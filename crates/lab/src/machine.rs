//! The guest machine: q35 with an emulated Intel IOMMU, guinea-pig NICs, empty hotplug root
//! ports and a QMP socket, as a QEMU command line.
//!
//! Topology (bus numbers are what the guest's firmware-less Linux assigns; see lab/README.md):
//!
//! | guest BDF   | QEMU id       | what                                         | IOMMU group |
//! |-------------|---------------|----------------------------------------------|-------------|
//! | 00:02.0     | `rp-gp1`      | pcie-root-port                                | own         |
//! | 01:00.0     | `gp1`         | e1000e 8086:10d3                              | own (single)|
//! | 00:03.0     | `rp-gp2`      | pcie-root-port                                | own         |
//! | 02:00.0     | `gp2`         | e1000e 8086:10d3                              | own (single)|
//! | 00:04.0     | `rp-br`       | pcie-root-port                                | own         |
//! | 03:00.0     | `br0`         | pcie-pci-bridge                               | shared (multi) |
//! | 04:01.0     | `gp3`         | e1000e behind the bridge                      | shared (multi) |
//! | 04:02.0     | `gp4`         | e1000e behind the bridge                      | shared (multi) |
//! | 00:05.0–00:08.0 | `hp1`–`hp4` | empty pcie-root-ports for hot-add (buses 05–08) | own each |
//! | 00:09.0     | `rp-nvme`     | pcie-root-port                                | own         |
//! | 09:00.0     | `lab-nvme0`   | NVMe 1b36:0010, namespaces 1 and 2 (`nvme-ns`) | own (single)|
//! | 00:0a.0     | `rp-usb`      | pcie-root-port                                | own         |
//! | 0a:00.0     | `lab-xhci`    | qemu-xhci 1b36:000d, `usb-serial` 0403:6001 on port 1 | own |
//! | 00:0b.0     | `rp-scsi`     | pcie-root-port                                | own         |
//! | 0b:00.0     | `lab-scsi0`   | virtio-scsi 1af4:1048, two `scsi-hd` at targets 7 and 8 | own |
//! | 00:1f.0/2/3 | —             | ICH9 LPC, SATA, SMBus (q35 built-ins)         | shared      |
//!
//! Every backend is a `null-co` block node (reads zeroes, keeps nothing), so the machine
//! needs no image files. The mdev parent (`mtty`) is not a QEMU device: the lab kernel
//! builds the kernel's sample driver in (lab/kernel/lab.config).

use std::path::{Path, PathBuf};

use crate::accel::Accel;

/// The QEMU ids of the empty root ports, ready for `device_add ... bus=<id>`.
pub const HOTPLUG_PORTS: [&str; 4] = ["hp1", "hp2", "hp3", "hp4"];

/// The e1000e guinea pigs: (QEMU id, bus, PCI address on that bus).
pub const GUINEA_PIGS: [(&str, &str, &str); 4] = [
    ("gp1", "rp-gp1", "0.0"),
    ("gp2", "rp-gp2", "0.0"),
    ("gp3", "br0", "1.0"),
    ("gp4", "br0", "2.0"),
];

/// PCI vendor:device of the guinea-pig NICs (e1000e, 82574L).
pub const E1000E_ID: &str = "8086:10d3";

/// PCI vendor:device of the NVMe controller (QEMU's `nvme`), driver `nvme`.
pub const NVME_ID: &str = "1b36:0010";

/// The NVMe controller's namespace IDs (one `nvme-ns` each, 64 MiB).
pub const NVME_NAMESPACES: [u32; 2] = [1, 2];

/// USB `idVendor:idProduct` of the device on the xHCI controller: QEMU's `usb-serial`
/// (an FTDI FT232), whose interface the `ftdi_sio` driver takes.
pub const USB_DEVICE_ID: &str = "0403:6001";

/// SCSI `vendor` of the two virtio-scsi disks (`scsi-hd ... vendor=`); their `model`s are
/// `lab-disk-0` and `lab-disk-1`, at target 7 and 8, LUN 0. (Targets far from 0, so a disk
/// a test hot-adds at `0:0` never matches them.)
pub const SCSI_VENDOR: &str = "PLUGBRD";

/// The sysfs directory of the mdev parent: the kernel's sample `mtty` driver (a virtual
/// serial card), whose types are `mtty-1` and `mtty-2` (device API `vfio-pci`).
pub const MTTY_PARENT: &str = "/sys/devices/virtual/mtty/mtty";

/// How to build the guest machine.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// Guest RAM in MiB (a memfd backend with `share=on`, as vhost-user needs). Default 1024.
    pub memory_mib: u64,
    /// Virtual CPUs. Default 1: under QEMU 10.0's TCG, a guest with two vCPUs loses a
    /// vCPU's interrupts now and then (its timers stop firing; RCU reports "timer wakeup
    /// didn't happen ... Possible timer handling issue on cpu=1"), and whatever sleeps on
    /// that vCPU never wakes: the lab tests hung in vfio-pci's D3hot-to-D0 delay
    /// (`pci_power_up`), rebinding e1000e and vfio-pci hung within a few hundred rounds with
    /// two vCPUs and never with one (see lab/README.md).
    pub smp: u32,
    /// Extra QEMU arguments, appended last (e.g. `-device`, `-chardev` for vhost-user).
    pub extra_qemu_args: Vec<String>,
    /// Extra kernel command-line arguments.
    pub kernel_args: Vec<String>,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            memory_mib: 1024,
            smp: 1,
            extra_qemu_args: Vec::new(),
            kernel_args: Vec::new(),
        }
    }
}

/// The files one boot uses.
#[derive(Debug, Clone)]
pub struct BootFiles {
    /// The bzImage.
    pub kernel: PathBuf,
    /// The initramfs (newc cpio).
    pub initramfs: PathBuf,
    /// Where QEMU puts its QMP socket.
    pub qmp_socket: PathBuf,
}

impl MachineConfig {
    /// The full QEMU argument list (without the program name). The serial console is QEMU's
    /// stdin/stdout; QMP is a Unix socket server at `files.qmp_socket`.
    pub fn qemu_args(&self, accel: Accel, files: &BootFiles) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| (*s).to_string()));
        push(&accel.qemu_args());
        let mem = format!("{}M", self.memory_mib);
        push(&["-smp", &self.smp.to_string(), "-m", &mem]);
        push(&["-machine", "q35,kernel-irqchip=split,memory-backend=mem"]);
        push(&[
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        ]);
        push(&[
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ]);
        push(&["-device", "intel-iommu,intremap=on"]);
        let ports = [
            ("rp-gp1", "2.0"),
            ("rp-gp2", "3.0"),
            ("rp-br", "4.0"),
            (HOTPLUG_PORTS[0], "5.0"),
            (HOTPLUG_PORTS[1], "6.0"),
            (HOTPLUG_PORTS[2], "7.0"),
            (HOTPLUG_PORTS[3], "8.0"),
            ("rp-nvme", "9.0"),
            ("rp-usb", "a.0"),
            ("rp-scsi", "b.0"),
        ];
        for (chassis, (id, addr)) in (1..).zip(ports) {
            let dev = format!(
                "pcie-root-port,id={id},bus=pcie.0,addr={addr},chassis={chassis},slot={chassis}"
            );
            push(&["-device", &dev]);
        }
        push(&["-device", "pcie-pci-bridge,id=br0,bus=rp-br,addr=0.0"]);
        for (id, bus, addr) in GUINEA_PIGS {
            push(&["-netdev", &format!("user,id=net-{id},restrict=on")]);
            let dev = format!("e1000e,id={id},netdev=net-{id},bus={bus},addr={addr},romfile=");
            push(&["-device", &dev]);
        }
        let kinds = device_kinds();
        push(&kinds.iter().map(String::as_str).collect::<Vec<_>>());
        push(&[
            "-chardev",
            "stdio,id=ser0,signal=off",
            "-serial",
            "chardev:ser0",
        ]);
        push(&[
            "-qmp",
            &format!("unix:{},server=on,wait=off", path_str(&files.qmp_socket)),
        ]);
        push(&[
            "-kernel",
            &path_str(&files.kernel),
            "-initrd",
            &path_str(&files.initramfs),
        ]);
        // no_timer_check: under TCG on a loaded host the IO-APIC timer check can miss its
        // window, and with interrupt remapping the kernel panics ("timer doesn't work
        // through Interrupt-remapped IO-APIC"). KVM guests skip that check the same way.
        let mut cmdline = vec![
            "console=ttyS0",
            "intel_iommu=on",
            "no_timer_check",
            "panic=-1",
            "quiet",
            // Tells tests they are in the lab guest (see lab/README.md).
            "plugboard.lab=1",
        ];
        cmdline.extend(self.kernel_args.iter().map(String::as_str));
        push(&["-append", &cmdline.join(" ")]);
        a.extend(self.extra_qemu_args.iter().cloned());
        a
    }
}

/// The devices of every other hostdev kind: an NVMe controller with two namespaces, an
/// xHCI controller with a USB device, and a virtio-scsi controller with two disks. Each
/// disk is a `null-co` node. Their QEMU ids start with `lab-`, so that a test's own
/// devices (plugboard-qemu's `scsi0`, say) never collide with them.
fn device_kinds() -> Vec<String> {
    let null = |name: &str, size: u64| {
        [
            "-blockdev".to_owned(),
            format!("null-co,node-name={name},size={size},read-zeroes=on"),
        ]
    };
    let dev = |d: String| ["-device".to_owned(), d];
    let mut a = Vec::new();
    a.extend(dev(
        "nvme,id=lab-nvme0,serial=plugboard-lab,bus=rp-nvme,addr=0.0".to_owned(),
    ));
    for ns in NVME_NAMESPACES {
        a.extend(null(&format!("lab-nvme-ns{ns}"), 64 << 20));
        a.extend(dev(format!(
            "nvme-ns,id=lab-nvme0-ns{ns},bus=lab-nvme0,drive=lab-nvme-ns{ns},nsid={ns}"
        )));
    }
    a.extend(dev("qemu-xhci,id=lab-xhci,bus=rp-usb,addr=0.0".to_owned()));
    // A null chardev never reports itself open, and usb-serial plugs itself in only when
    // its chardev opens: always-plugged=on makes it present from boot.
    a.extend(["-chardev".to_owned(), "null,id=lab-usb-serial".to_owned()]);
    a.extend(dev(
        "usb-serial,id=lab-usb1,bus=lab-xhci.0,port=1,chardev=lab-usb-serial,always-plugged=on"
            .to_owned(),
    ));
    a.extend(dev(
        "virtio-scsi-pci,id=lab-scsi0,bus=rp-scsi,addr=0.0".to_owned()
    ));
    for (i, target) in [(0, 7), (1, 8)] {
        a.extend(null(&format!("lab-scsi-disk{i}"), 16 << 20));
        a.extend(dev(format!(
            "scsi-hd,id=lab-sd{i},bus=lab-scsi0.0,channel=0,scsi-id={target},lun=0,\
             drive=lab-scsi-disk{i},vendor={SCSI_VENDOR},product=lab-disk-{i}"
        )));
    }
    a
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> BootFiles {
        BootFiles {
            kernel: "/k/bzImage".into(),
            initramfs: "/r/initramfs.cpio".into(),
            qmp_socket: "/r/qmp.sock".into(),
        }
    }

    #[test]
    fn command_line_has_the_iommu_ports_and_sockets() {
        let cfg = MachineConfig {
            memory_mib: 512,
            smp: 2,
            extra_qemu_args: vec!["-device".into(), "virtio-rng-pci".into()],
            kernel_args: vec!["foo=1".into()],
        };
        let args = cfg.qemu_args(Accel::Tcg, &files());
        let line = args.join(" ");
        assert!(
            line.starts_with("-accel tcg -cpu max -smp 2 -m 512M"),
            "{line}"
        );
        // One vCPU unless asked: two lose interrupts under TCG.
        let default = MachineConfig::default().qemu_args(Accel::Tcg, &files());
        assert!(
            default
                .join(" ")
                .starts_with("-accel tcg -cpu max -smp 1 -m 1024M"),
            "{default:?}"
        );
        assert!(line.contains("memory-backend-memfd,id=mem,size=512M,share=on"));
        assert!(line.contains("-device intel-iommu,intremap=on"));
        assert!(line.contains("q35,kernel-irqchip=split"));
        for port in HOTPLUG_PORTS {
            assert!(
                line.contains(&format!("pcie-root-port,id={port},")),
                "{port}"
            );
        }
        assert_eq!(line.matches("e1000e,").count(), 4);
        assert!(line.contains("e1000e,id=gp3,netdev=net-gp3,bus=br0,addr=1.0"));
        assert!(line.contains("-qmp unix:/r/qmp.sock,server=on,wait=off"));
        assert!(line.contains(
            "console=ttyS0 intel_iommu=on no_timer_check panic=-1 quiet plugboard.lab=1 foo=1"
        ));
        assert!(line.ends_with("-device virtio-rng-pci"));
    }

    #[test]
    fn every_hostdev_kind_has_a_device() {
        let line = MachineConfig::default()
            .qemu_args(Accel::Tcg, &files())
            .join(" ");
        assert!(line.contains("-device nvme,id=lab-nvme0,serial=plugboard-lab,bus=rp-nvme,"));
        for ns in NVME_NAMESPACES {
            assert!(
                line.contains(&format!(
                    "nvme-ns,id=lab-nvme0-ns{ns},bus=lab-nvme0,drive=lab-nvme-ns{ns},nsid={ns}"
                )),
                "{line}"
            );
            assert!(line.contains(&format!("null-co,node-name=lab-nvme-ns{ns},size=67108864,")));
        }
        assert!(line.contains("-device qemu-xhci,id=lab-xhci,bus=rp-usb,"));
        assert!(line.contains(
            "usb-serial,id=lab-usb1,bus=lab-xhci.0,port=1,chardev=lab-usb-serial,always-plugged=on"
        ));
        assert!(line.contains("-chardev null,id=lab-usb-serial"));
        assert!(line.contains("-device virtio-scsi-pci,id=lab-scsi0,bus=rp-scsi,"));
        assert!(line.contains(
            "scsi-hd,id=lab-sd0,bus=lab-scsi0.0,channel=0,scsi-id=7,lun=0,drive=lab-scsi-disk0,vendor=PLUGBRD,product=lab-disk-0"
        ));
        assert!(line.contains("scsi-id=8,lun=0,drive=lab-scsi-disk1,"));
        // The guinea pigs and the hotplug ports are where they were.
        assert!(line.contains("pcie-root-port,id=hp4,bus=pcie.0,addr=8.0,chassis=7,slot=7"));
        assert!(line.contains("pcie-root-port,id=rp-nvme,bus=pcie.0,addr=9.0,chassis=8,slot=8"));
    }

    #[test]
    fn chassis_numbers_are_unique() {
        let args = MachineConfig::default().qemu_args(Accel::Kvm, &files());
        let mut chassis: Vec<&str> = args
            .iter()
            .filter_map(|a| a.split(",chassis=").nth(1))
            .map(|rest| rest.split(',').next().unwrap_or(""))
            .collect();
        let n = chassis.len();
        chassis.sort_unstable();
        chassis.dedup();
        assert_eq!(chassis.len(), n);
        assert_eq!(n, 10);
    }
}
