//! The daemon's memory budget (at most 10 MiB resident after 10,000 requests, measured by
//! `cargo bench -p plugboard --bench daemon_rss`) holds only while the `plugboard` binary
//! does not carry the Kubernetes client: with the DRA plugin linked in, the binary doubled
//! (11 to 25 MB) and the daemon sat at 12.8 MiB. The plugin is its own binary
//! (`plugboard-dra`); this keeps the Kubernetes crates out of this one.

#[test]
fn the_plugboard_binary_does_not_depend_on_the_kubernetes_client() {
    let manifest = include_str!("../Cargo.toml");
    let dependencies: Vec<&str> = manifest
        .lines()
        .map(str::trim)
        .filter_map(|line| line.split(['.', ' ', '=']).next())
        .collect();
    for heavy in ["plugboard-dra", "kube", "k8s-openapi", "tonic", "prost"] {
        assert!(
            !dependencies.contains(&heavy),
            "crates/plugboard/Cargo.toml depends on {heavy}: the daemon would carry the \
             Kubernetes client (run the daemon_rss bench before adding it)"
        );
    }
}
