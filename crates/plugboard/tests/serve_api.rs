//! `plugboard serve` as a real process: the OpenAPI document against the running server
//! (every documented route answers, every served route is documented), 4xx JSON errors for
//! bad input, health and metrics, the socket's mode and group, and a clean SIGTERM.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failure here is a test failure"
)]

mod serve_util;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;

use serde_json::{Value, json};
use serve_util::{Daemon, empty_sysfs};

const OPENAPI: &str = include_str!("../../../docs/openapi.json");
const ROUTES_RS: &str = include_str!("../src/serve/routes.rs");

fn start() -> (tempfile::TempDir, Daemon) {
    let dir = tempfile::tempdir().unwrap();
    let sysfs = empty_sysfs(dir.path());
    let daemon = Daemon::start(
        dir.path(),
        &dir.path().join("state"),
        &sysfs,
        &["--socket-group", "1234"],
    );
    (dir, daemon)
}

/// (METHOD, /path/{param}) of every route the router serves, read from `routes.rs`.
fn served_routes() -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    let mut rest = ROUTES_RS;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        let mut depth = 1;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .unwrap()
            .0;
        let call = &rest[..end];
        let path = call.split('"').nth(1).unwrap().to_owned();
        for method in ["get", "post", "put", "patch", "delete"] {
            let found = call.match_indices(&format!("{method}(")).any(|(i, _)| {
                i == 0
                    || !call.as_bytes()[i - 1].is_ascii_alphanumeric()
                        && call.as_bytes()[i - 1] != b'_'
            });
            if found {
                routes.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    routes
}

fn documented_routes(doc: &Value) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            routes.insert((method.to_uppercase(), path.clone()));
        }
    }
    routes
}

#[test]
fn the_openapi_document_and_the_server_agree() {
    let doc: Value = serde_json::from_str(OPENAPI).unwrap();
    let served = served_routes();
    let documented = documented_routes(&doc);
    assert!(served.len() >= 18, "routes.rs parsed to {served:?}");
    assert_eq!(
        served, documented,
        "served routes (left) and docs/openapi.json (right) differ"
    );

    let (_dir, daemon) = start();
    for (method, path) in &documented {
        let url = path
            .replace("{name}", "no-such-vm")
            .replace("{id}", "0000000000000000")
            .replace("{address}", "0000:09:00.0");
        let operation = &doc["paths"][path][method.to_lowercase()];
        let body = operation.get("requestBody").map(|_| json!({}));
        let (status, answer) = daemon.request(method, &url, body.as_ref());
        let documented_codes: Vec<u16> = operation["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.parse().unwrap())
            .collect();
        assert!(
            documented_codes.contains(&status),
            "{method} {url} answered {status} {answer}, documented {documented_codes:?}"
        );
        assert_ne!(status, 405, "{method} {url}");
        if status >= 400 {
            let message = answer["message"].as_str().unwrap();
            assert!(
                !message.starts_with("no route"),
                "{method} {url}: {message}"
            );
            assert!(answer["error"].is_string(), "{method} {url}: {answer}");
        }
    }
    let (status, answer) = daemon.request("GET", "/v1/nothing-here", None);
    assert_eq!(status, 404);
    assert_eq!(answer["message"], "no route GET /v1/nothing-here");
}

#[test]
fn bad_input_is_a_4xx_with_a_json_reason() {
    let (dir, daemon) = start();
    let not_a_socket = dir.path().join("missing.sock");
    let cases: Vec<(&str, String, Option<Value>, u16, &str)> = vec![
        (
            "POST",
            "/v1/vms".into(),
            Some(json!({"name": "a"})),
            400,
            "missing field `endpoint`",
        ),
        (
            "POST",
            "/v1/vms".into(),
            Some(
                json!({"name": "a", "endpoint": {"kind": "qemu", "qmp_socket": "/x"}, "color": 1}),
            ),
            400,
            "unknown field `color`",
        ),
        (
            "POST",
            "/v1/vms".into(),
            Some(json!("a string")),
            400,
            "invalid type",
        ),
        (
            "POST",
            "/v1/vms".into(),
            Some(json!({"name": "../etc", "endpoint": {"kind": "qemu", "qmp_socket": "/x"}})),
            400,
            "VM name",
        ),
        (
            "POST",
            "/v1/vms".into(),
            Some(json!({"name": "a", "endpoint": {"kind": "qemu", "qmp_socket": "rel.sock"}})),
            400,
            "absolute path",
        ),
        (
            "POST",
            "/v1/vms".into(),
            Some(json!({"name": "a", "endpoint": {"kind": "qemu", "qmp_socket": not_a_socket}})),
            400,
            "missing.sock",
        ),
        (
            "POST",
            "/v1/vms".into(),
            Some(json!({"name": "a", "endpoint": {"kind": "xen"}})),
            400,
            "unknown variant `xen`",
        ),
        (
            "POST",
            "/v1/vms/a/devices".into(),
            Some(json!({"kind": "disk", "path": "/x"})),
            404,
            "no VM named \"a\"",
        ),
        (
            "POST",
            "/v1/vms/a/devices".into(),
            Some(json!({"kind": "floppy"})),
            400,
            "unknown variant `floppy`",
        ),
        (
            "DELETE",
            "/v1/vms/a/devices/xyz".into(),
            None,
            400,
            "device id \"xyz\"",
        ),
        (
            "DELETE",
            "/v1/vms/a/devices/7".into(),
            None,
            404,
            "no VM named",
        ),
        (
            "POST",
            "/v1/hostdevs/not-an-address/detach".into(),
            None,
            400,
            "PCI address \"not-an-address\"",
        ),
        (
            "POST",
            "/v1/hostdevs/prepare".into(),
            Some(json!({"owner": "x", "devices": ["0000:01:00.0"]})),
            400,
            "owner",
        ),
        (
            "POST",
            "/v1/hostdevs/prepare".into(),
            Some(json!({"owner": "a/b", "devices": ["usb:zz"]})),
            400,
            "usb:zz",
        ),
        (
            "POST",
            "/v1/hostdevs/release".into(),
            Some(json!({"owner": "a/b", "devices": []})),
            400,
            "empty",
        ),
        ("GET", "/v1/vms/a".into(), None, 404, "no VM named"),
        ("PUT", "/v1/vms".into(), None, 405, "PUT is not allowed"),
    ];
    for (method, path, body, code, needle) in cases {
        let (status, answer) = daemon.request(method, &path, body.as_ref());
        assert_eq!(status, code, "{method} {path} {body:?}: {answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(needle),
            "{method} {path}: {message:?} lacks {needle:?}"
        );
        assert!(answer["error"].is_string());
    }
    // Bodies that are not JSON, or not said to be.
    let (status, body) = raw(
        &daemon,
        "POST",
        "/v1/vms",
        Some("application/json"),
        "{not json",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"error\":\"bad-request\""), "{body}");
    let (status, body) = raw(&daemon, "POST", "/v1/vms", None, "{}");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Content-Type: application/json"), "{body}");
    let (_, metrics) = raw(&daemon, "GET", "/metrics", None, "");
    assert!(!metrics.contains("code=\"500\""), "{metrics}");
}

/// One request written by hand, for bodies the client would never send.
fn raw(
    daemon: &Daemon,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    let ct = content_type
        .map(|c| format!("Content-Type: {c}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer.split(' ').nth(1).unwrap().parse().unwrap();
    let body = answer.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

#[test]
fn health_metrics_socket_mode_and_sigterm() {
    let (_dir, daemon) = start();
    let meta = std::fs::metadata(&daemon.socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), 1234);
    let (status, health) = daemon.request("GET", "/healthz", None);
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert!(
        health["sysfs_root"].as_str().unwrap().ends_with("/sys"),
        "{health}"
    );
    assert!(
        health["state_dir"].as_str().unwrap().ends_with("/state"),
        "{health}"
    );
    assert_eq!(
        daemon.request("GET", "/v1/vms", None),
        (200, json!({"vms": []}))
    );
    daemon.request("GET", "/v1/vms/x", None);
    let answer = daemon.client().send("GET", "/metrics", None).unwrap();
    assert_eq!(answer.status, 200);
    let text = answer.body;
    for needle in [
        "plugboard_operations_total{operation=\"GET /v1/vms\",code=\"200\"} 1\n",
        "plugboard_operations_total{operation=\"GET /v1/vms/{name}\",code=\"404\"} 1\n",
        "plugboard_errors_total{operation=\"GET /v1/vms/{name}\",class=\"not-found\"} 1\n",
        "plugboard_operation_duration_seconds_count{operation=\"GET /healthz\"} 1\n",
        "# TYPE plugboard_operation_duration_seconds histogram\n",
        "plugboard_devices{state=\"attached\"} 0\n",
        "plugboard_hostdevs{list=\"active\"} 0\n",
    ] {
        assert!(text.contains(needle), "{needle:?} not in\n{text}");
    }
    let socket = daemon.socket.clone();
    let status = daemon.stop();
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "the socket is removed on SIGTERM");
}
