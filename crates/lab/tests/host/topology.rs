//! Smoke test of the guest machine: its IOMMU groups, the e1000e guinea pigs in
//! single-device groups and in the multi-device group behind the PCIe-to-PCI bridge, the
//! empty hotplug root ports, and the VFIO and iommufd device nodes. The BDFs asserted here
//! are the ones lab/README.md documents.

use std::collections::BTreeMap;

use plugboard_lab::{E1000E_ID, Guest};

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
