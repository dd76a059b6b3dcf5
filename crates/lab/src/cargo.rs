//! Finding what the lab runs: each workspace package's `lab` integration test binary
//! (`crates/*/tests/lab.rs`) and the `plugboard` binary, built by cargo in the dev profile.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::error::{LabError, Result};

/// A built `lab` test binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabTest {
    /// The package it belongs to (e.g. `plugboard-sysfs`).
    pub package: String,
    /// The executable on the host.
    pub executable: PathBuf,
}

/// The packages of the workspace at `root` that have a test target named `lab`.
pub fn packages_with_lab_tests(root: &Path) -> Result<Vec<String>> {
    let out = cargo(root, &["metadata", "--no-deps", "--format-version", "1"])?;
    let meta: Value =
        serde_json::from_slice(&out).map_err(|e| bad("cargo metadata", e.to_string()))?;
    Ok(lab_packages(&meta))
}

fn lab_packages(meta: &Value) -> Vec<String> {
    let mut names = Vec::new();
    for pkg in meta["packages"].as_array().into_iter().flatten() {
        let has_lab = pkg["targets"].as_array().into_iter().flatten().any(|t| {
            t["name"] == "lab"
                && t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "test"))
        });
        if let (true, Some(name)) = (has_lab, pkg["name"].as_str()) {
            names.push(name.to_string());
        }
    }
    names.sort();
    names
}

/// Builds the `lab` test binaries of `packages` (`cargo test --no-run`) and returns them.
pub fn build_lab_tests(root: &Path, packages: &[String]) -> Result<Vec<LabTest>> {
    if packages.is_empty() {
        return Ok(Vec::new());
    }
    let mut args = vec![
        "test",
        "--no-run",
        "--message-format=json-render-diagnostics",
        "--test",
        "lab",
    ];
    for p in packages {
        args.push("-p");
        args.push(p);
    }
    let out = cargo(root, &args)?;
    let mut tests = Vec::new();
    for (target, exe, package) in artifacts(&out) {
        if target == "lab" {
            tests.push(LabTest {
                package,
                executable: exe,
            });
        }
    }
    tests.sort_by(|a, b| a.package.cmp(&b.package));
    Ok(tests)
}

/// Builds the `plugboard` binary and returns its path.
pub fn build_plugboard(root: &Path) -> Result<PathBuf> {
    build_bin(root, "plugboard", "plugboard")
}

/// Builds binary `bin` of package `package` (dev profile) and returns its executable.
pub fn build_bin(root: &Path, package: &str, bin: &str) -> Result<PathBuf> {
    let out = cargo(
        root,
        &[
            "build",
            "-p",
            package,
            "--bin",
            bin,
            "--message-format=json-render-diagnostics",
        ],
    )?;
    artifacts(&out)
        .into_iter()
        .find(|(target, _, _)| target == bin)
        .map(|(_, exe, _)| exe)
        .ok_or_else(|| {
            bad(
                &format!("cargo build -p {package} --bin {bin}"),
                format!("no {bin} executable in its output"),
            )
        })
}

/// Builds example `example` of package `package` (dev profile) and returns its executable:
/// a probe a host-side test puts into the guest.
pub fn build_example(root: &Path, package: &str, example: &str) -> Result<PathBuf> {
    let out = cargo(
        root,
        &[
            "build",
            "-p",
            package,
            "--example",
            example,
            "--message-format=json-render-diagnostics",
        ],
    )?;
    artifacts(&out)
        .into_iter()
        .find(|(target, _, _)| target == example)
        .map(|(_, exe, _)| exe)
        .ok_or_else(|| {
            bad(
                "cargo build --example",
                format!("no {example} executable of {package} in its output"),
            )
        })
}

/// (target name, executable, package name) of every executable artifact in cargo's JSON.
fn artifacts(json_lines: &[u8]) -> Vec<(String, PathBuf, String)> {
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(json_lines).lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        let target = msg["target"]["name"].as_str().unwrap_or("").to_string();
        found.push((target, PathBuf::from(exe), package_name(&msg["package_id"])));
    }
    found
}

/// The name in a package id: `path+file:///w/crates/sysfs#plugboard-sysfs@0.1.0` or the
/// older `plugboard-sysfs 0.1.0 (path+file:///w/crates/sysfs)`.
fn package_name(id: &Value) -> String {
    let id = id.as_str().unwrap_or("");
    if let Some((_, frag)) = id.rsplit_once('#') {
        return frag.split('@').next().unwrap_or(frag).to_string();
    }
    id.split(' ').next().unwrap_or(id).to_string()
}

fn cargo(root: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let program = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&program)
        .args(args)
        .current_dir(root)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|source| LabError::Spawn {
            program: program.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(LabError::Tool {
            program: format!("cargo {}", args.join(" ")),
            status: out.status.to_string(),
            detail: "see its messages above".into(),
        });
    }
    Ok(out.stdout)
}

fn bad(program: &str, detail: String) -> LabError {
    LabError::Tool {
        program: program.into(),
        status: "bad output".into(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lab_targets_are_found_by_name_and_kind() {
        let meta = json!({"packages": [
            {"name": "plugboard-sysfs", "targets": [{"name": "lab", "kind": ["test"]}, {"name": "plugboard_sysfs", "kind": ["lib"]}]},
            {"name": "plugboard-vfio", "targets": [{"name": "lab", "kind": ["bench"]}]},
            {"name": "plugboard-lab", "targets": [{"name": "host", "kind": ["test"]}]},
        ]});
        assert_eq!(lab_packages(&meta), ["plugboard-sysfs"]);
    }

    #[test]
    fn artifacts_and_package_ids() {
        let lines = concat!(
            r#"{"reason":"compiler-artifact","package_id":"path+file:///w/crates/sysfs#plugboard-sysfs@0.1.0","target":{"name":"lab","kind":["test"]},"executable":"/w/target/debug/deps/lab-1"}"#,
            "\n",
            r#"{"reason":"compiler-artifact","package_id":"path+file:///w/crates/sysfs#0.1.0","target":{"name":"x","kind":["lib"]},"executable":null}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
            "\n"
        );
        let found = artifacts(lines.as_bytes());
        assert_eq!(
            found,
            [(
                "lab".to_string(),
                PathBuf::from("/w/target/debug/deps/lab-1"),
                "plugboard-sysfs".to_string()
            )]
        );
        assert_eq!(
            package_name(&json!("plugboard-vfio 0.1.0 (path+file:///w)")),
            "plugboard-vfio"
        );
    }
}
