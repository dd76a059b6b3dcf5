//! plugboard-dra's tests over the fake kernel: the kubelet's gRPC contract through the
//! generated clients on real Unix sockets (`grpc.rs`), and the ResourceSlices and their
//! publishing against the stand-in API server (`slices.rs`).

mod grpc;
mod slices;
mod util;
