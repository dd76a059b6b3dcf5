//! Smoke test of the guest machine: its IOMMU groups, the e1000e guinea pigs in
//! single-device groups and in the multi-device group behind the PCIe-to-PCI bridge, the
//! empty hotplug root ports, the devices of every other hostdev kind (an NVMe controller
//! with two namespaces, a USB device on xHCI, two virtio-scsi disks with sg nodes, the mtty
//! mdev parent), and the VFIO and iommufd device nodes. The BDFs asserted here are the ones
//! lab/README.md documents.

use std::collections::BTreeMap;

use plugboard_lab::{
    E1000E_ID, Guest, MTTY_PARENT, NVME_ID, NVME_NAMESPACES, SCSI_VENDOR, USB_DEVICE_ID,
};

use crate::{boot, sh};

/// One PCI function as the guest's sysfs shows it.
#[derive(Debug)]
struct Pci {
    bdf: String,
    id: String,
    class: String,
    group: String,
    driver: String,
}

const LIST: &str = r#"for d in /sys/bus/pci/devices/*; do
  g=$(readlink $d/iommu_group); drv=$(readlink $d/driver)
  v=$(cat $d/vendor); i=$(cat $d/device)
  echo "pci ${d##*/} ${v#0x}:${i#0x} $(cat $d/class) ${g##*/} ${drv##*/}"
done"#;

fn list(guest: &mut Guest) -> Vec<Pci> {
    let out = sh(guest, LIST);
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&"pci")).then(|| Pci {
                bdf: f[1].into(),
                id: f[2].into(),
                class: f[3].into(),
                group: f.get(4).copied().unwrap_or("").into(),
                driver: f.get(5).copied().unwrap_or("").into(),
            })
        })
        .collect()
}

#[test]
#[ignore = "boots the lab guest (lab/run-tests.sh)"]
fn iommu_groups_guinea_pigs_ports_and_vfio_nodes() {
    let mut guest = boot();
    let devs = list(&mut guest);
    for d in &devs {
        eprintln!("{d:?}");
    }
    let mut groups: BTreeMap<&str, Vec<&Pci>> = BTreeMap::new();
    for d in &devs {
        assert!(!d.group.is_empty(), "{} has no IOMMU group", d.bdf);
        groups.entry(d.group.as_str()).or_default().push(d);
    }
    assert!(groups.len() >= 8, "too few IOMMU groups: {groups:?}");

    let nics: Vec<&Pci> = devs.iter().filter(|d| d.id == E1000E_ID).collect();
    assert_eq!(nics.len(), 4, "{nics:?}");
    for n in &nics {
        assert_eq!(n.driver, "e1000e", "{} not on e1000e", n.bdf);
    }
    let single: Vec<&str> = nics
        .iter()
        .filter(|n| groups[n.group.as_str()].len() == 1)
        .map(|n| n.bdf.as_str())
        .collect();
    assert_eq!(single, ["0000:01:00.0", "0000:02:00.0"]);

    let shared: Vec<&Pci> = nics
        .iter()
        .copied()
        .filter(|n| groups[n.group.as_str()].len() > 1)
        .collect();
    assert_eq!(shared.len(), 2, "{shared:?}");
    assert_eq!(
        shared[0].group, shared[1].group,
        "the bridged NICs are in different groups"
    );
    let group = &groups[shared[0].group.as_str()];
    let mut members: Vec<&str> = group.iter().map(|d| d.bdf.as_str()).collect();
    members.sort_unstable();
    assert_eq!(
        members,
        ["0000:03:00.0", "0000:04:01.0", "0000:04:02.0"],
        "{group:?}"
    );
    let bridge = group.iter().find(|d| d.bdf == "0000:03:00.0").unwrap();
    assert_eq!(
        (bridge.id.as_str(), bridge.class.as_str()),
        ("1b36:000e", "0x060400")
    );

    for port in [
        "0000:00:05.0",
        "0000:00:06.0",
        "0000:00:07.0",
        "0000:00:08.0",
    ] {
        let p = devs
            .iter()
            .find(|d| d.bdf == port)
            .unwrap_or_else(|| panic!("no root port {port}"));
        assert_eq!(
            (p.id.as_str(), p.class.as_str()),
            ("1b36:000c", "0x060400"),
            "{p:?}"
        );
        assert_eq!(p.driver, "pcieport", "{p:?}");
    }

    // The other kinds' controllers, each behind its own root port, alone in its group.
    for (port, bdf, id, driver) in [
        ("0000:00:09.0", "0000:09:00.0", NVME_ID, "nvme"),
        ("0000:00:0a.0", "0000:0a:00.0", "1b36:000d", "xhci_hcd"),
        ("0000:00:0b.0", "0000:0b:00.0", "1af4:1048", "virtio-pci"),
    ] {
        let find = |bdf: &str| {
            devs.iter()
                .find(|d| d.bdf == bdf)
                .unwrap_or_else(|| panic!("no {bdf}"))
        };
        let p = find(port);
        assert_eq!(
            (p.id.as_str(), p.driver.as_str()),
            ("1b36:000c", "pcieport"),
            "{p:?}"
        );
        let d = find(bdf);
        assert_eq!((d.id.as_str(), d.driver.as_str()), (id, driver), "{d:?}");
        assert_eq!(groups[d.group.as_str()].len(), 1, "{bdf} shares its group");
    }
    kinds(&mut guest);

    let nodes = sh(
        &mut guest,
        "ls -d /dev/vfio/vfio /dev/iommu; ls /sys/class/iommu; dmesg | grep -c 'IRQ remapping' || true",
    );
    assert!(
        nodes.contains("/dev/vfio/vfio"),
        "no legacy VFIO container node: {nodes}"
    );
    assert!(nodes.contains("/dev/iommu"), "no iommufd node: {nodes}");
    assert!(
        nodes.contains("dmar"),
        "no intel-iommu (dmar) in /sys/class/iommu: {nodes}"
    );
    assert!(
        nodes.lines().last().is_some_and(|n| n != "0"),
        "interrupt remapping not enabled: {nodes}"
    );
    guest.shutdown().expect("poweroff");
}

/// What the guest shows of the NVMe namespaces, the USB device, the SCSI disks and the mdev
/// parent.
fn kinds(guest: &mut Guest) {
    // NVMe: one controller, namespaces 1 and 2 as block devices of 64 MiB.
    let ns = sh(
        guest,
        "for n in /sys/bus/pci/devices/0000:09:00.0/nvme/nvme*/nvme*n*; do \
         echo \"ns ${n##*/} $(cat $n/nsid) $(cat $n/size)\"; done",
    );
    // Sorted by NSID: the kernel scans namespaces in parallel, so `nvme0n1` may be NSID 2.
    let mut ns: Vec<(String, String)> = ns
        .lines()
        .filter_map(|l| l.strip_prefix("ns "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[1].to_owned(), f[2].to_owned())
        })
        .collect();
    ns.sort();
    let want: Vec<(String, String)> = NVME_NAMESPACES
        .iter()
        .map(|n| (n.to_string(), "131072".to_owned()))
        .collect();
    assert_eq!(ns, want, "NVMe namespaces");

    // USB: the device on bus 1 (xHCI's USB 2 root hub), its interface on ftdi_sio.
    // The hub driver enumerates the USB device a few seconds after boot under TCG.
    sh(
        guest,
        "for i in $(seq 600); do grep -qx 0403 /sys/bus/usb/devices/*/idVendor && exit 0; \
         sleep 0.1; done; echo 'no USB device 0403:xxxx'; exit 1",
    );
    let usb = sh(
        guest,
        "for d in /sys/bus/usb/devices/*; do [ -f $d/idVendor ] || continue; \
         echo \"usb ${d##*/} $(cat $d/idVendor):$(cat $d/idProduct) $(cat $d/busnum)\"; done; \
         for i in /sys/bus/usb/devices/*:*; do echo \"intf ${i##*/} $(readlink $i/driver)\"; done",
    );
    let dev = usb
        .lines()
        .find(|l| l.starts_with("usb ") && l.contains(USB_DEVICE_ID))
        .unwrap_or_else(|| panic!("no USB device {USB_DEVICE_ID}: {usb}"));
    let name = dev.split_whitespace().nth(1).unwrap_or_default();
    assert!(
        usb.lines()
            .any(|l| l.starts_with(&format!("intf {name}:")) && l.ends_with("/ftdi_sio")),
        "{name}'s interface is not on ftdi_sio: {usb}"
    );

    // SCSI: two disks of ours at targets 7 and 8, each with a block and an sg node.
    let scsi = sh(
        guest,
        "for d in /sys/bus/scsi/devices/*:*:*:*; do [ -f $d/vendor ] || continue; \
         echo \"scsi ${d##*/} $(cat $d/vendor) $(cat $d/model) $(ls $d/block) $(ls $d/scsi_generic)\"; done",
    );
    let ours: Vec<Vec<&str>> = scsi
        .lines()
        .filter(|l| l.starts_with("scsi ") && l.contains(SCSI_VENDOR))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(ours.len(), 2, "{scsi}");
    for (disk, target) in ours.iter().zip(["7", "8"]) {
        let hctl: Vec<&str> = disk[1].split(':').collect();
        assert_eq!((hctl[2], hctl[3]), (target, "0"), "{disk:?}");
        assert!(disk[3].starts_with("lab-disk-"), "{disk:?}");
        assert!(
            disk[4].starts_with("sd") && disk[5].starts_with("sg"),
            "{disk:?}"
        );
    }

    // mdev: the mtty parent offers its two types, device API vfio-pci.
    let types = sh(
        guest,
        &format!(
            "for t in {MTTY_PARENT}/mdev_supported_types/*; do \
             echo \"type ${{t##*/}} $(cat $t/device_api) $(cat $t/available_instances)\"; done"
        ),
    );
    let types: Vec<&str> = types.lines().filter(|l| l.starts_with("type ")).collect();
    assert_eq!(types.len(), 2, "{types:?}");
    assert!(types[0].starts_with("type mtty-1 vfio-pci "), "{types:?}");
    assert!(types[1].starts_with("type mtty-2 vfio-pci "), "{types:?}");
}
