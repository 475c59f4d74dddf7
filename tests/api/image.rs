//! The container image's build context: `docker build` runs Cargo on what the
//! Dockerfile copies, so everything Cargo reads to load the workspace must be copied.

/// Each workspace member (besides the root package) is copied into the build stage:
/// without its manifest Cargo cannot load the workspace, even to build `kms` alone.
#[test]
fn the_dockerfile_copies_every_workspace_member() {
    let root = env!("CARGO_MANIFEST_DIR");
    let manifest = std::fs::read_to_string(format!("{root}/Cargo.toml")).unwrap();
    let dockerfile = std::fs::read_to_string(format!("{root}/Dockerfile")).unwrap();
    let members = manifest
        .split("members = [")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .expect("Cargo.toml lists workspace members");
    let members: Vec<&str> = members
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty() && *m != ".")
        .collect();
    assert!(!members.is_empty(), "{manifest}");
    for member in members {
        let copy = format!("COPY {member} ./{member}");
        assert!(
            dockerfile.lines().any(|l| l.trim() == copy),
            "the Dockerfile lacks `{copy}`"
        );
    }
}
