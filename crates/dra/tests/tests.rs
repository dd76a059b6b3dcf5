//! plugboard-dra's tests over the fake kernel: the kubelet's gRPC contract through the
//! generated clients on real Unix sockets (`grpc.rs`), and the ResourceSlices and their
//! publishing against the stand-in API server (`slices.rs`).

#![expect(
    clippy::unwrap_used,
    reason = "test code: a failure here is a test failure"
)]

mod apiserver;
mod deploy;
mod grpc;
mod kube;
mod openapi;
mod run;
mod schema;
mod slices;
mod util;
mod watch;
