//! The real check: `plugboard host ls --json` agrees with `lspci -Dnn -k` on this machine's
//! real `/sys` (read only), for every device's address, IDs, class, revision and driver.
//! The same comparison runs on a fake kernel's tree (lspci reads it with
//! `-O sysfs.path=…`), which also checks that the fake kernel's layout and config bytes are
//! what a real tool expects.
//!
//! These tests need `lspci` (Debian `pciutils`). When it is missing they fail, saying so;
//! set `PLUGBOARD_NO_LSPCI=1` to skip them on purpose (the skip is printed).

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failure here is a test failure"
)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use plugboard_sysfs::fake::{DriverSpec, FakeKernel, PciSpec};

#[derive(Debug, PartialEq, Eq)]
struct Device {
    class: String,
    ids: String,
    revision: Option<String>,
    driver: Option<String>,
}

/// Returns `None` (after saying so) when lspci is absent and the skip is allowed.
fn lspci(extra: &[&str]) -> Option<String> {
    let out = Command::new("lspci")
        .args(["-Dnn", "-k"])
        .args(extra)
        .output();
    match out {
        Ok(out) if out.status.success() => Some(String::from_utf8(out.stdout).unwrap()),
        Ok(out) => panic!(
            "lspci {extra:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(err) => {
            if std::env::var("PLUGBOARD_NO_LSPCI").as_deref() == Ok("1") {
                eprintln!(
                    "SKIPPED: lspci is not installed ({err}) and PLUGBOARD_NO_LSPCI=1: plugboard host ls was NOT compared with lspci"
                );
                return None;
            }
            panic!(
                "lspci is not installed ({err}): install pciutils to run this check, or set PLUGBOARD_NO_LSPCI=1 to skip it on purpose"
            );
        }
    }
}

/// Parses `lspci -Dnn -k`: `ADDR CLASSNAME [cccc]: NAME [vvvv:dddd] (rev rr)` lines, then
/// tab-indented detail lines with `Kernel driver in use: X`.
fn parse_lspci(text: &str) -> BTreeMap<String, Device> {
    let mut devices = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(detail) = line.strip_prefix('\t') {
            if let (Some(addr), Some(driver)) =
                (&current, detail.strip_prefix("Kernel driver in use: "))
            {
                let d: &mut Device = devices.get_mut(addr).unwrap();
                d.driver = Some(driver.trim().to_owned());
            }
            continue;
        }
        let (addr, rest) = line.split_once(' ').unwrap();
        let class_end = rest.find("]: ").unwrap();
        let class = rest[class_end - 4..class_end].to_owned();
        let body = &rest[class_end + 3..];
        // The IDs are the last [vvvv:dddd] on the line.
        let ids_end = body
            .match_indices(']')
            .map(|(i, _)| i)
            .rfind(|&i| {
                i >= 10 && {
                    let s = &body[i - 9..i];
                    s.as_bytes()[4] == b':' && s.bytes().filter(u8::is_ascii_hexdigit).count() == 8
                }
            })
            .unwrap_or_else(|| panic!("no [vvvv:dddd] in {line:?}"));
        let ids = body[ids_end - 9..ids_end].to_owned();
        let revision = body.split_once("(rev ").map(|(_, r)| r[..2].to_owned());
        current = Some(addr.to_owned());
        devices.insert(
            addr.to_owned(),
            Device {
                class,
                ids,
                revision,
                driver: None,
            },
        );
    }
    devices
}

fn plugboard(sysfs_root: &Path) -> BTreeMap<String, Device> {
    let out = Command::new(env!("CARGO_BIN_EXE_plugboard"))
        .arg("--sysfs-root")
        .arg(sysfs_root)
        .args(["--json", "host", "ls"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["problems"],
        serde_json::json!([]),
        "plugboard could not read some devices"
    );
    v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let class = d["class"].as_str().unwrap(); // 0xCCSSPP
            let revision = d["revision"].as_str().unwrap().to_owned();
            (
                d["address"].as_str().unwrap().to_owned(),
                Device {
                    class: class[2..6].to_owned(),
                    ids: format!(
                        "{}:{}",
                        d["ids"]["vendor"].as_str().unwrap(),
                        d["ids"]["device"].as_str().unwrap()
                    ),
                    // lspci prints the revision only when it is not zero.
                    revision: (revision != "00").then_some(revision),
                    driver: d["driver"].as_str().map(str::to_owned),
                },
            )
        })
        .collect()
}

fn compare(ours: &BTreeMap<String, Device>, theirs: &BTreeMap<String, Device>) {
    assert!(!theirs.is_empty(), "lspci listed no devices");
    let our_addrs: Vec<&String> = ours.keys().collect();
    let their_addrs: Vec<&String> = theirs.keys().collect();
    assert_eq!(our_addrs, their_addrs, "the device lists differ");
    for (addr, theirs) in theirs {
        assert_eq!(
            &ours[addr], theirs,
            "device {addr}: plugboard (left) vs lspci (right)"
        );
    }
}

#[test]
fn host_ls_agrees_with_lspci_on_this_machine() {
    let Some(text) = lspci(&[]) else { return };
    let theirs = parse_lspci(&text);
    let ours = plugboard(Path::new("/sys"));
    compare(&ours, &theirs);
    eprintln!(
        "plugboard host ls agrees with lspci on {} devices",
        theirs.len()
    );
}

#[test]
fn host_ls_agrees_with_lspci_on_a_fake_kernel() {
    let kernel = FakeKernel::builder()
        .driver(DriverSpec::new("nvme").id(0x1cc1, 0x8201))
        .pci(
            PciSpec::new("0000:00:00.0", 0x8086, 0x29c0)
                .class(0x060000)
                .unbound(),
        )
        .pci(
            PciSpec::bridge("0000:00:1e.0")
                .revision(0xd9)
                .iommu_group(5),
        )
        .pci(
            PciSpec::new("0000:01:01.0", 0x8086, 0x10d3)
                .class(0x020000)
                .parent("0000:00:1e.0")
                .iommu_group(5)
                .driver("e1000e"),
        )
        .pci(
            PciSpec::new("0000:02:00.0", 0x1cc1, 0x8201)
                .class(0x010802)
                .revision(3)
                .iommu_group(6),
        )
        .pci(
            PciSpec::new("0001:3b:00.0", 0x10de, 0x2330)
                .class(0x030200)
                .revision(0xa1)
                .iommu_group(8)
                .driver_override("vfio-pci"),
        )
        .build()
        .unwrap();
    let sys = kernel.sysfs_root();
    let option = format!("sysfs.path={}", sys.join("bus/pci").display());
    let Some(text) = lspci(&["-A", "linux-sysfs", "-O", &option]) else {
        return;
    };
    let theirs = parse_lspci(&text);
    assert_eq!(theirs.len(), 5, "{text}");
    compare(&plugboard(&sys), &theirs);
}

#[test]
fn parser_reads_lspci_lines() {
    let text = "\
0000:00:1f.2 SATA controller [0106]: Intel Corporation 82801IR/IO/IH (ICH9R/DO/DH) 6 port SATA Controller [AHCI mode] [8086:2922] (rev 02) (prog-if 01 [AHCI 1.0])
\tSubsystem: Red Hat, Inc. QEMU Virtual Machine [1af4:1100]
\tKernel driver in use: ahci
\tKernel modules: ahci
0000:00:00.0 Host bridge [0600]: Intel Corporation Device [8086:0d57]
";
    let d = parse_lspci(text);
    assert_eq!(
        d["0000:00:1f.2"],
        Device {
            class: "0106".into(),
            ids: "8086:2922".into(),
            revision: Some("02".into()),
            driver: Some("ahci".into()),
        }
    );
    assert_eq!(d["0000:00:00.0"].driver, None);
    assert_eq!(d["0000:00:00.0"].ids, "8086:0d57");
}
