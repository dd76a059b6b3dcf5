//! Metrics in Prometheus' text format: operations by outcome, errors by class, latency
//! histograms, and gauges of VMs, devices and host devices by state.
//!
//! The HTTP layer records each request under its route (`GET /v1/vms`), the status code
//! and its error class; the gauges are read from the service when `/metrics` is served.
//! Counters live behind one mutex held for a map update only.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default)]
struct Counters {
    /// (operation, status code) → count.
    operations: BTreeMap<(String, u16), u64>,
    /// (operation, error class) → count.
    errors: BTreeMap<(String, &'static str), u64>,
    /// operation → latency.
    latency: BTreeMap<String, Histogram>,
}

/// The service's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<Counters>,
}

/// Point-in-time values rendered as gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gauges {
    /// VMs connected to their hypervisor, and not.
    pub vms_connected: u64,
    /// VMs not connected.
    pub vms_disconnected: u64,
    /// Devices attached to a VM.
    pub devices_attached: u64,
    /// Devices known but not attached.
    pub devices_detached: u64,
    /// Host PCI devices on the hostdev active list.
    pub hostdevs_active: u64,
    /// Host PCI devices on the hostdev inactive list.
    pub hostdevs_inactive: u64,
}

impl Metrics {
    /// Records one operation: its name, the status it answered, its error class (if it
    /// failed) and how long it took.
    pub fn record(
        &self,
        operation: &str,
        status: u16,
        error: Option<&'static str>,
        took: Duration,
    ) {
        let mut c = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        *c.operations
            .entry((operation.to_owned(), status))
            .or_default() += 1;
        if let Some(class) = error {
            *c.errors.entry((operation.to_owned(), class)).or_default() += 1;
        }
        let h = c.latency.entry(operation.to_owned()).or_default();
        let secs = took.as_secs_f64();
        for (bucket, bound) in h.buckets.iter_mut().zip(LATENCY_BUCKETS) {
            if secs <= bound {
                *bucket += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// The text exposition (format 0.0.4).
    pub fn render(&self, gauges: &Gauges) -> String {
        let c = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        out.push_str(
            "# HELP plugboard_operations_total API operations by route and status code.\n",
        );
        out.push_str("# TYPE plugboard_operations_total counter\n");
        for ((op, code), n) in &c.operations {
            let _ = writeln!(
                out,
                "plugboard_operations_total{{operation=\"{}\",code=\"{code}\"}} {n}",
                escape(op)
            );
        }
        out.push_str(
            "# HELP plugboard_errors_total Failed API operations by route and error class.\n",
        );
        out.push_str("# TYPE plugboard_errors_total counter\n");
        for ((op, class), n) in &c.errors {
            let _ = writeln!(
                out,
                "plugboard_errors_total{{operation=\"{}\",class=\"{class}\"}} {n}",
                escape(op)
            );
        }
        out.push_str("# HELP plugboard_operation_duration_seconds API operation latency.\n");
        out.push_str("# TYPE plugboard_operation_duration_seconds histogram\n");
        for (op, h) in &c.latency {
            let op = escape(op);
            for (bound, n) in LATENCY_BUCKETS.iter().zip(h.buckets) {
                let _ = writeln!(
                    out,
                    "plugboard_operation_duration_seconds_bucket{{operation=\"{op}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "plugboard_operation_duration_seconds_bucket{{operation=\"{op}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "plugboard_operation_duration_seconds_sum{{operation=\"{op}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "plugboard_operation_duration_seconds_count{{operation=\"{op}\"}} {}",
                h.count
            );
        }
        drop(c);
        let gauge =
            |out: &mut String, name: &str, help: &str, label: &str, rows: &[(&str, u64)]| {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} gauge");
                for (value, n) in rows {
                    let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
                }
            };
        gauge(
            &mut out,
            "plugboard_vms",
            "Registered VMs by hypervisor connection.",
            "state",
            &[
                ("connected", gauges.vms_connected),
                ("disconnected", gauges.vms_disconnected),
            ],
        );
        gauge(
            &mut out,
            "plugboard_devices",
            "VM devices by state.",
            "state",
            &[
                ("attached", gauges.devices_attached),
                ("detached", gauges.devices_detached),
            ],
        );
        gauge(
            &mut out,
            "plugboard_hostdevs",
            "Host PCI devices in the hostdev registry by list.",
            "list",
            &[
                ("active", gauges.hostdevs_active),
                ("inactive", gauges.hostdevs_inactive),
            ],
        );
        out
    }
}

/// Escapes a label value (backslash, quote, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::default();
        m.record("GET /v1/vms", 200, None, Duration::from_micros(300));
        m.record("GET /v1/vms", 200, None, Duration::from_millis(3));
        m.record(
            "POST /v1/vms",
            400,
            Some("bad-request"),
            Duration::from_millis(1),
        );
        let text = m.render(&Gauges {
            devices_attached: 2,
            ..Gauges::default()
        });
        assert!(
            text.contains("plugboard_operations_total{operation=\"GET /v1/vms\",code=\"200\"} 2\n"),
            "{text}"
        );
        assert!(text.contains(
            "plugboard_errors_total{operation=\"POST /v1/vms\",class=\"bad-request\"} 1\n"
        ));
        assert!(text.contains("plugboard_operation_duration_seconds_bucket{operation=\"GET /v1/vms\",le=\"0.0005\"} 1\n"));
        assert!(text.contains("plugboard_operation_duration_seconds_bucket{operation=\"GET /v1/vms\",le=\"0.005\"} 2\n"));
        assert!(
            text.contains(
                "plugboard_operation_duration_seconds_count{operation=\"GET /v1/vms\"} 2\n"
            )
        );
        assert!(text.contains("plugboard_devices{state=\"attached\"} 2\n"));
        assert_eq!(escape("a\"b\\"), "a\\\"b\\\\");
    }
}
