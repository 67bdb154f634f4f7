//! What the backend tests share: the services' settings from the test bootstrap
//! (a missing one fails the test), Azurite containers, the S3 test server's
//! settings, and audit lines kept in memory.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

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
    create_container(name, Some(permissions))
}

/// Creates the container `name` in Azurite with the Azure SDK for Python.
pub fn create_azurite_container(name: &str) {
    create_container(name, None);
}

/// tests/azurite/create_container.py: what it printed (the SAS token, if asked).
fn create_container(name: &str, sas_permissions: Option<&str>) -> String {
    let out = std::process::Command::new(service_env("FERRY_PYTHON"))
        .args([
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tests/azurite/create_container.py"
            ),
            &service_env("FERRY_AZURITE_ENDPOINT"),
            name,
        ])
        .args(sas_permissions)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "creating container {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The S3 test server (moto) with its static test credentials: `bucket` and
/// `prefix` at `endpoint` (the server itself, or a proxy in front of it).
pub fn moto_s3_config(
    endpoint: String,
    bucket: &str,
    prefix: &str,
    region: &str,
) -> ferry_runner::storage::s3::S3Config {
    use ferry_runner::storage::s3::{ReadTuning, S3Auth, S3Config};
    use zeroize::Zeroizing;
    S3Config {
        bucket: bucket.into(),
        prefix: prefix.into(),
        region: region.into(),
        endpoint: Some(endpoint),
        force_path_style: true,
        insecure_plain_http_on_loopback: true,
        network: Default::default(),
        auth: S3Auth::Static {
            access_key_id: Zeroizing::new("testing".into()),
            secret_access_key: Zeroizing::new("testing".into()),
            session_token: None,
        },
        reads: ReadTuning::default(),
    }
}

/// Audit lines kept in memory.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    /// Everything written, as text.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// One JSON value per line.
    pub fn records(&self) -> Vec<serde_json::Value> {
        self.text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// Runs `connector` once in local mode from `dir` (its `secrets/` beside it)
/// with `platform`, as run `r1` with two objects at once, through the
/// rotation path: after refused credentials, `reread` gives the Secrets again
/// (and may rotate a secret store's secret first). The outcome and the run's
/// audit lines.
pub async fn run_rotating<F, Fut>(
    connector: &ferry_crds::Connector,
    platform: &ferry_runner::config::Platform,
    dir: &std::path::Path,
    reread: F,
) -> (
    Result<ferry_runner::transfer::Report, ferry_runner::job::Failure>,
    String,
)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<
            Output = Result<ferry_runner::config::SecretsDir, ferry_runner::job::Failure>,
        >,
{
    use ferry_runner::audit::AuditLog;
    use ferry_runner::config::SecretsDir;
    use ferry_runner::job::{self, Job};
    use ferry_runner::transfer::{Mode, Progress};

    let lines = Lines::default();
    let name = connector.metadata.name.as_deref().unwrap_or("connector");
    let audit = AuditLog::new(
        Box::new(lines.clone()),
        name,
        "acme",
        "r1",
        "local",
        "store",
    );
    let job = Job {
        connector,
        mode: Mode::Sync,
        erase: None,
        tenant_region: None,
        anchor: None,
        run_id: "r1",
        concurrency: 2,
        base_dir: dir,
        lineage: None,
        platform,
        part: Default::default(),
    };
    let secrets = SecretsDir::new(dir.join("secrets"));
    let progress = Arc::new(Progress::default());
    let outcome = job::execute_with_rotation(job, secrets, reread, &audit, progress).await;
    (outcome, lines.text())
}

/// An Azure account key that Azurite refuses (well formed, wrong).
pub const WRONG_ACCOUNT_KEY: &str =
    "Q2FuYXJ5V3JvbmdBY2NvdW50S2V5Q2FuYXJ5V3JvbmdBY2NvdW50S2V5Q2FuYXJ5V3Jvbmc=";

/// A work folder: `src/` holding `rows` files `a.csv`, `b.csv`, ... (`id\n1\n`,
/// `id\n2\n`, ...) and `secrets/kek/kek`.
pub fn work_dir(rows: u8) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("src")).unwrap();
    for i in 1..=rows {
        let name = char::from(b'a' + i - 1);
        std::fs::write(d.join(format!("src/{name}.csv")), format!("id\n{i}\n")).unwrap();
    }
    std::fs::create_dir_all(d.join("secrets/kek")).unwrap();
    std::fs::write(d.join("secrets/kek/kek"), [7u8; 32]).unwrap();
    dir
}

/// A [`work_dir`] of one file and a Connector `rotated` copying it to a new
/// Azurite container (named after `prefix`) whose account key is read as
/// `credentials` (YAML) says.
pub fn to_azurite(prefix: &str, credentials: &str) -> (tempfile::TempDir, ferry_crds::Connector) {
    let dir = work_dir(1);
    let mut b = [0u8; 4];
    ferry_runner::crypto::aead::random_bytes(&mut b).unwrap();
    let container = format!("{prefix}-{}", hex::encode(b));
    create_azurite_container(&container);
    let connector = serde_saphyr::from_str(&format!(
        r#"
apiVersion: ferry.dev/v1alpha1
kind: Connector
metadata: {{name: rotated, namespace: acme}}
spec:
  source: {{local: {{path: src}}}}
  destination: {{azureBlob: {{account: devstoreaccount1, container: {container}, region: westeurope, endpoint: "{}", insecurePlainHttpOnLoopback: true, credentials: {credentials}}}}}
  compliance: {{dataResidency: any}}
  encryption: {{keyRef: {{secretRef: {{name: kek}}}}}}
"#,
        service_env("FERRY_AZURITE_ENDPOINT")
    ))
    .unwrap();
    (dir, connector)
}

/// Asserts that `dir` holds the plaintext of [`work_dir`]'s files `a.csv`,
/// `b.csv`, ... up to `rows`.
pub fn assert_plain(dir: &std::path::Path, rows: u8) {
    for i in 1..=rows {
        let name = char::from(b'a' + i - 1);
        assert_eq!(
            std::fs::read_to_string(dir.join(format!("{name}.csv"))).unwrap(),
            format!("id\n{i}\n"),
            "{name}.csv"
        );
    }
}

/// The versions of the secret store's secrets a run read, in order: what
/// follows `@` in the objects of its `secret.read` audit lines.
pub fn versions_read(audit: &str) -> Vec<String> {
    audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["action"] == "secret.read" && l["object"].is_string())
        .filter_map(|l| Some(l["object"].as_str()?.rsplit('@').next()?.to_string()))
        .collect()
}
