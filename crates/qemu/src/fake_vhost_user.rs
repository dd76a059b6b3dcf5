//! A minimal vhost-user net backend for tests: it speaks the control protocol, moves no
//! packets.
//!
//! No vhost-user net backend is packaged on the build machines (DPDK is heavy and needs
//! hugepages), yet `netdev_add type=vhost-user` only succeeds once a backend has answered
//! QEMU's handshake. This one answers what QEMU asks of a backend that offers nothing but
//! `VIRTIO_F_VERSION_1` and an empty protocol feature set: `GET_FEATURES`,
//! `GET_PROTOCOL_FEATURES` and `GET_VRING_BASE` get replies, everything else (owner, memory
//! table, vrings, with their fds) is read and acknowledged by silence, as the protocol wants
//! without `REPLY_ACK`. Enough for QEMU to
//! add the netdev and the guest to bring a virtio-net NIC up with our MAC. It records the
//! requests it saw.
#![expect(
    clippy::expect_used,
    reason = "a test fixture: failing to set it up is the test's failure"
)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const GET_FEATURES: u32 = 1;
const GET_VRING_BASE: u32 = 11;
const GET_PROTOCOL_FEATURES: u32 = 15;
/// `VIRTIO_F_VERSION_1` and `VHOST_USER_F_PROTOCOL_FEATURES`. Without the latter QEMU
/// never learns the backend's queue count and takes it for 0 ("more queues than supported").
const FEATURES: u64 = (1 << 32) | (1 << 30);
/// The most requests recorded.
const LOG_LIMIT: usize = 1000;
/// Version 1, and the reply bit.
const REPLY_FLAGS: u32 = 0x1 | 0x4;

/// A listening fake backend; stops on drop.
#[derive(Debug)]
pub struct FakeVhostUserNet {
    dir: tempfile::TempDir,
    socket: PathBuf,
    requests: Arc<Mutex<Vec<u32>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeVhostUserNet {
    /// Listens on a socket in a fresh temp dir and serves one connection at a time.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("vhost-user-net.sock");
        let listener = UnixListener::bind(&socket).expect("bind the fake backend");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, stop) = (Arc::clone(&requests), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => serve(stream, &requests, &stop),
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Self {
            dir,
            socket,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// The listening socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The request codes received so far, in order.
    pub fn requests(&self) -> Vec<u32> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The scratch directory (lives as long as the fake).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for FakeVhostUserNet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut stream: UnixStream, requests: &Mutex<Vec<u32>>, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    while !stop.load(Ordering::Relaxed) {
        // The 12-byte header, with any fds riding on it (memory regions, kick and call
        // eventfds): not needed, so receiving closes them.
        let mut header = [0u8; 12];
        let n = match crate::sys::recv_with_fds(&stream, &mut header) {
            crate::sys::RecvOutcome::Data { bytes, .. } => bytes,
            crate::sys::RecvOutcome::Again => continue,
            crate::sys::RecvOutcome::Closed => return,
        };
        if n < header.len() && stream.read_exact(&mut header[n..]).is_err() {
            return;
        }
        let word =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let (request, size) = (word(0), word(8));
        let mut payload = vec![0u8; usize::try_from(size).unwrap_or(0)];
        if stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .is_err()
            || stream.read_exact(&mut payload).is_err()
        {
            return;
        }
        let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
        if let Ok(mut r) = requests.lock()
            && r.len() < LOG_LIMIT
        {
            r.push(request);
        }
        let reply: Option<Vec<u8>> = match request {
            GET_FEATURES => Some(FEATURES.to_le_bytes().to_vec()),
            GET_PROTOCOL_FEATURES => Some(0u64.to_le_bytes().to_vec()),
            // struct vhost_vring_state { index, num }: the index asked for, position 0.
            GET_VRING_BASE => Some([payload.get(..4).unwrap_or(&[0; 4]), &[0u8; 4]].concat()),
            _ => None,
        };
        if let Some(body) = reply {
            let mut msg = Vec::with_capacity(12 + body.len());
            msg.extend_from_slice(&request.to_le_bytes());
            msg.extend_from_slice(&REPLY_FLAGS.to_le_bytes());
            msg.extend_from_slice(&u32::try_from(body.len()).unwrap_or(0).to_le_bytes());
            msg.extend_from_slice(&body);
            if stream.write_all(&msg).is_err() {
                return;
            }
        }
    }
}
