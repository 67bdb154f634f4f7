//! What the backend tests share: the services' settings from the test bootstrap
//! (a missing one fails the test) and Azurite containers.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

/// Azurite's documented development account key (public, not a secret).
pub const AZURITE_DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A setting written by `tests/bootstrap.sh start`.
pub fn service_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: start the test services with `bash tests/bootstrap.sh start` and source ~/.cache/ferry/services/env (make test does both)")
    })
}

/// Creates the container `name` in Azurite and returns a SAS token for it that
/// grants only `permissions` (e.g. `rl`).
pub fn create_azurite_container_with_sas(name: &str, permissions: &str) -> String {
    let out = std::process::Command::new(service_env("FERRY_PYTHON"))
        .args([
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tests/azurite/create_container.py"
            ),
            &service_env("FERRY_AZURITE_ENDPOINT"),
            name,
            permissions,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "creating container {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Creates the container `name` in Azurite with the Azure SDK for Python.
pub fn create_azurite_container(name: &str) {
    let out = std::process::Command::new(service_env("FERRY_PYTHON"))
        .args([
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tests/azurite/create_container.py"
            ),
            &service_env("FERRY_AZURITE_ENDPOINT"),
            name,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "creating container {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
