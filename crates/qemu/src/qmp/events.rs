//! QMP events and the queue that holds them while the client waits for a reply.
//!
//! QEMU interleaves events with replies on one stream. An event that arrives while the
//! client waits for a reply (a `DEVICE_DELETED` racing the `device_del` reply is the usual
//! case) must not be lost, so the client queues every event it reads and callers take the
//! ones they want later. The queue is bounded: past [`EventQueue::CAPACITY`] the oldest
//! event is dropped with a warning, so a chatty VM cannot grow the process without bound.

use std::collections::VecDeque;

use serde_json::Value;

/// One asynchronous QMP event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event name (`DEVICE_DELETED`, `RESET`, …).
    pub name: String,
    /// The event's `data` member (`Null` when absent).
    pub data: Value,
}

impl Event {
    /// Whether this is the `DEVICE_DELETED` event of the device with this qdev id.
    ///
    /// QEMU also sends `DEVICE_DELETED` for children of the device (for virtio-blk-pci,
    /// `/machine/peripheral/<id>/virtio-backend`, without a `device` member); those are
    /// not the device itself and do not count.
    pub fn is_device_deleted(&self, id: &str) -> bool {
        if self.name != "DEVICE_DELETED" {
            return false;
        }
        let device = self.data.get("device").and_then(Value::as_str);
        let path = self.data.get("path").and_then(Value::as_str);
        device == Some(id) || path == Some(format!("/machine/peripheral/{id}").as_str())
    }

    /// Whether this is a `DEVICE_UNPLUG_GUEST_ERROR` for the device with this qdev id.
    pub fn is_unplug_guest_error(&self, id: &str) -> bool {
        if self.name != "DEVICE_UNPLUG_GUEST_ERROR" {
            return false;
        }
        let device = self.data.get("device").and_then(Value::as_str);
        let path = self.data.get("path").and_then(Value::as_str);
        device == Some(id) || path == Some(format!("/machine/peripheral/{id}").as_str())
    }
}

/// A bounded FIFO of events not yet taken by a caller.
#[derive(Debug, Default)]
pub struct EventQueue {
    events: VecDeque<Event>,
    dropped: u64,
}

impl EventQueue {
    /// The most events held; older ones are dropped first.
    pub const CAPACITY: usize = 1024;

    /// Appends an event, dropping the oldest one when full.
    pub fn push(&mut self, event: Event) {
        if self.events.len() >= Self::CAPACITY
            && let Some(old) = self.events.pop_front()
        {
            self.dropped += 1;
            tracing::warn!(event = %old.name, dropped = self.dropped, "QMP event queue full; dropped the oldest event");
        }
        self.events.push_back(event);
    }

    /// Removes and returns the first event that matches.
    pub fn take_first(&mut self, mut matches: impl FnMut(&Event) -> bool) -> Option<Event> {
        let at = self.events.iter().position(&mut matches)?;
        self.events.remove(at)
    }

    /// Removes and returns every event, oldest first.
    pub fn drain(&mut self) -> Vec<Event> {
        self.events.drain(..).collect()
    }

    /// Events held now.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether no event is held.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// How many events were dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ev(name: &str, data: Value) -> Event {
        Event {
            name: name.into(),
            data,
        }
    }

    #[test]
    fn device_deleted_matches_id_or_peripheral_path_but_not_children() {
        assert!(
            ev(
                "DEVICE_DELETED",
                json!({"device": "vb0", "path": "/machine/peripheral/vb0"})
            )
            .is_device_deleted("vb0")
        );
        assert!(
            ev("DEVICE_DELETED", json!({"path": "/machine/peripheral/vb0"}))
                .is_device_deleted("vb0")
        );
        assert!(
            !ev(
                "DEVICE_DELETED",
                json!({"path": "/machine/peripheral/vb0/virtio-backend"})
            )
            .is_device_deleted("vb0")
        );
        assert!(
            !ev(
                "DEVICE_DELETED",
                json!({"device": "vb01", "path": "/machine/peripheral/vb01"})
            )
            .is_device_deleted("vb0")
        );
        assert!(
            !ev("DEVICE_UNPLUG_GUEST_ERROR", json!({"device": "vb0"})).is_device_deleted("vb0")
        );
        assert!(
            ev("DEVICE_UNPLUG_GUEST_ERROR", json!({"device": "vb0"})).is_unplug_guest_error("vb0")
        );
    }

    #[test]
    fn take_first_keeps_order_of_the_rest() {
        let mut q = EventQueue::default();
        q.push(ev("A", Value::Null));
        q.push(ev("B", Value::Null));
        q.push(ev("A", json!(2)));
        assert_eq!(q.take_first(|e| e.name == "A").unwrap().data, Value::Null);
        assert_eq!(q.take_first(|e| e.name == "C"), None);
        let rest: Vec<_> = q.drain().into_iter().map(|e| e.name).collect();
        assert_eq!(rest, ["B", "A"]);
        assert!(q.is_empty());
    }

    #[test]
    fn queue_is_bounded() {
        let mut q = EventQueue::default();
        for i in 0..EventQueue::CAPACITY + 5 {
            q.push(ev("E", json!(i)));
        }
        assert_eq!(q.len(), EventQueue::CAPACITY);
        assert_eq!(q.dropped(), 5);
        assert_eq!(q.take_first(|_| true).unwrap().data, json!(5));
    }
}
