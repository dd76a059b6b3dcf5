//! Generates the kubelet's gRPC APIs (plugin registration, DRA v1 and v1beta1) from the
//! upstream `.proto` files in `proto/`, with protox as the compiler: no system `protoc`.

use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    const PROTOS: [&str; 3] = [
        "proto/k8s.io/kubelet/pkg/apis/pluginregistration/v1/api.proto",
        "proto/k8s.io/kubelet/pkg/apis/dra/v1/api.proto",
        "proto/k8s.io/kubelet/pkg/apis/dra/v1beta1/api.proto",
    ];
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
