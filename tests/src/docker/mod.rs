//! Docker test support: finding the engine, building guest images from
//! statically linked `runner-examples` binaries, unique ids, and clean-up.
//!
//! No registry is reachable in CI, so images are built locally through
//! bollard's build API from a `FROM scratch` context holding one static
//! binary. The image tag carries a hash of the binary and its entrypoint,
//! so an unchanged guest is not rebuilt.

pub mod harness;

pub use crate::repo_root;
pub use bollard::Docker;
use bollard::query_parameters::{
    BuildImageOptions, ListContainersOptions, ListImagesOptions, RemoveContainerOptions,
    RemoveImageOptions,
};
use futures::StreamExt;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Label on test images: the content hash they were built from.
pub const CONTENT_LABEL: &str = "oxydra.test.content";

/// Test images of older builds are pruned once they are this old (younger
/// ones may still be in use by a concurrent test run of another build).
const PRUNE_AFTER_SECS: i64 = 3600;

/// The Docker engine to test against, or `None` (after printing why) when
/// the tests should skip.
///
/// `DOCKER_HOST` from the environment if it is set and answers. If it is
/// not set: with `CI` set, panic (CI must run these tests); otherwise ask
/// `bash .ci/dockerd.sh status` for the private test engine, and skip if it
/// does not answer.
///
/// # Panics
///
/// With `CI` set, when no engine answers.
pub fn docker_host() -> Option<String> {
    let in_ci = std::env::var_os("CI").is_some();
    if let Ok(host) = std::env::var("DOCKER_HOST") {
        if answers(&host) {
            return Some(host);
        }
        assert!(!in_ci, "DOCKER_HOST={host} does not answer");
        eprintln!("skipping: DOCKER_HOST={host} does not answer");
        return None;
    }
    assert!(
        !in_ci,
        "CI is set but DOCKER_HOST is not: run `bash .ci/dockerd.sh start` and export DOCKER_HOST"
    );
    let script = repo_root().join(".ci/dockerd.sh");
    let from_script = Command::new("bash")
        .arg(&script)
        .arg("status")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("DOCKER_HOST=").map(str::to_owned))
        })
        .filter(|h| answers(h));
    if from_script.is_none() {
        eprintln!(
            "skipping: no Docker engine (run `bash .ci/dockerd.sh start` and export DOCKER_HOST)"
        );
    }
    from_script
}

/// Whether a `unix://` Docker host accepts connections.
fn answers(host: &str) -> bool {
    let path = host.strip_prefix("unix://").unwrap_or(host);
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// A client for `host`, its API version negotiated.
///
/// # Panics
///
/// When the engine does not answer.
pub async fn connect(host: &str) -> Docker {
    let path = host.strip_prefix("unix://").unwrap_or(host);
    Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION)
        .expect("docker socket exists")
        .negotiate_version()
        .await
        .expect("docker engine answers /version")
}

/// Path of a statically linked `runner-examples` binary (`demo-guest`,
/// `probe-guest`, ...), suitable for a `FROM scratch` image.
///
/// The first call in a process runs `cargo build -p runner-examples --bins
/// --target <arch>-unknown-linux-gnu` with `-C target-feature=+crt-static`
/// into `target/static`; later calls reuse it.
///
/// # Panics
///
/// When the build fails or the binary does not exist afterwards.
pub fn static_guest_binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = match BUILT.get_or_init(build_static) {
        Ok(dir) => dir,
        Err(why) => panic!("cannot build static runner-examples binaries: {why}"),
    };
    let path = dir.join(name);
    assert!(path.is_file(), "no static binary {}", path.display());
    path
}

fn build_static() -> Result<PathBuf, String> {
    let root = repo_root();
    let target = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let target_dir = root.join("target/static");
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let mut build = Command::new(cargo);
    build
        .args(["build", "--quiet", "-p", "runner-examples", "--bins"])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .args(["--target", &target])
        .arg("--target-dir")
        .arg(&target_dir)
        // With an explicit --target, RUSTFLAGS reach the target artifacts
        // only, not build scripts or proc macros.
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    crate::run_ok(&mut build, "static build")?;
    Ok(target_dir.join(target).join("debug"))
}

/// An image whose entrypoint is `/<binary> <args...>`, built from the
/// static `binary` (see [`static_guest_binary`]) unless an image with the
/// same content hash already exists. Returns its tag.
///
/// # Panics
///
/// When the build fails.
pub async fn guest_image(docker: &Docker, binary: &str, args: &[&str]) -> String {
    let path = static_guest_binary(binary);
    let bytes = std::fs::read(&path).expect("read static guest binary");
    let mut entrypoint = vec![format!("/{binary}")];
    entrypoint.extend(args.iter().map(|a| a.to_string()));
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    entrypoint.hash(&mut h);
    let content = format!("{:016x}", h.finish());
    let tag = format!("runner-test-{binary}:{content}");

    if let Ok(image) = docker.inspect_image(&tag).await {
        let label = image
            .config
            .and_then(|c| c.labels)
            .and_then(|l| l.get(CONTENT_LABEL).cloned());
        if label.as_deref() == Some(content.as_str()) {
            return tag;
        }
    }

    let dockerfile = format!(
        "FROM scratch\nCOPY {binary} /{binary}\nENTRYPOINT {}\n",
        serde_json_array(&entrypoint)
    );
    let context = tar(&[
        ("Dockerfile", dockerfile.as_bytes(), 0o644),
        (binary, &bytes, 0o755),
    ]);
    let opts = BuildImageOptions {
        t: Some(tag.clone()),
        labels: Some(HashMap::from([(CONTENT_LABEL.to_owned(), content)])),
        rm: true,
        forcerm: true,
        ..Default::default()
    };
    let mut progress = docker.build_image(opts, None, Some(bollard::body_full(context.into())));
    while let Some(step) = progress.next().await {
        let info = step.unwrap_or_else(|e| panic!("building {tag}: {e}"));
        if let Some(err) = info.error_detail.and_then(|d| d.message) {
            panic!("building {tag}: {err}");
        }
    }
    prune_old_builds(docker, &format!("runner-test-{binary}"), &tag).await;
    tag
}

/// Removes tags of `repo` other than `keep` that are older than
/// [`PRUNE_AFTER_SECS`], so the engine's data root does not fill up with
/// one image per guest build. Failures (an image still in use) are ignored:
/// the engine refuses, and a later run tries again.
async fn prune_old_builds(docker: &Docker, repo: &str, keep: &str) {
    let opts = ListImagesOptions {
        filters: Some(HashMap::from([(
            "reference".to_owned(),
            vec![repo.to_owned()],
        )])),
        ..Default::default()
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for image in docker.list_images(Some(opts)).await.unwrap_or_default() {
        if now - image.created < PRUNE_AFTER_SECS {
            continue;
        }
        for tag in image.repo_tags.iter().filter(|t| t.as_str() != keep) {
            let rm = RemoveImageOptions {
                force: false,
                ..Default::default()
            };
            if let Err(e) = docker.remove_image(tag, Some(rm), None).await {
                eprintln!("keeping old test image {tag}: {e}");
            }
        }
    }
}

/// A JSON array of strings (entrypoints here are plain ASCII paths/flags).
fn serde_json_array(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("[{}]", quoted.join(","))
}

/// A ustar archive of regular files (name, content, mode).
pub fn tar(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data, mode) in files {
        assert!(name.len() < 100, "tar name too long: {name}");
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let octal = |field: &mut [u8], v: u64| {
            let s = format!("{:0width$o}\0", v, width = field.len() - 1);
            field.copy_from_slice(s.as_bytes());
        };
        octal(&mut h[100..108], u64::from(*mode));
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], data.len() as u64);
        octal(&mut h[136..148], 0);
        h[148..156].fill(b' ');
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// An id unique to this process and call, usable in user ids, container
/// names and labels: `<prefix>-<pid>-<n>-<nanos>`.
pub fn unique_id(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// What the engine reports about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerFacts {
    /// Its id.
    pub id: String,
    /// Its name, without the leading `/`.
    pub name: String,
    /// Whether it is running.
    pub running: bool,
    /// Its labels.
    pub labels: HashMap<String, String>,
}

/// Inspects the container `id_or_name`; `None` when it does not exist.
///
/// # Panics
///
/// On any engine error other than "no such container".
pub async fn container_facts(docker: &Docker, id_or_name: &str) -> Option<ContainerFacts> {
    match docker.inspect_container(id_or_name, None).await {
        Ok(c) => Some(ContainerFacts {
            id: c.id.unwrap_or_default(),
            name: c
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_owned(),
            running: c.state.and_then(|s| s.running) == Some(true),
            labels: c.config.and_then(|cfg| cfg.labels).unwrap_or_default(),
        }),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => None,
        Err(e) => panic!("inspecting container {id_or_name}: {e}"),
    }
}

/// Ids of every container (running or not) labelled `label=value`.
///
/// # Panics
///
/// When the engine refuses the listing.
pub async fn containers_labelled(docker: &Docker, label: &str, value: &str) -> Vec<String> {
    let opts = ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([(
            "label".to_owned(),
            vec![format!("{label}={value}")],
        )])),
        ..Default::default()
    };
    docker
        .list_containers(Some(opts))
        .await
        .unwrap_or_else(|e| panic!("listing containers labelled {label}={value}: {e}"))
        .into_iter()
        .filter_map(|c| c.id)
        .collect()
}

/// Force-removes every container labelled `label=value` when dropped, so a
/// failing test leaves nothing running. Runs on its own thread and runtime,
/// so it works from inside or outside an async test.
#[derive(Debug)]
pub struct RemoveOnDrop {
    host: String,
    filter: String,
}

impl RemoveOnDrop {
    /// Guards every container with label `label=value` on `host`.
    pub fn new(host: &str, label: &str, value: &str) -> Self {
        Self {
            host: host.to_owned(),
            filter: format!("{label}={value}"),
        }
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let host = self.host.clone();
        let filter = self.filter.clone();
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let docker = connect(&host).await;
                let opts = ListContainersOptions {
                    all: true,
                    filters: Some(HashMap::from([("label".to_owned(), vec![filter])])),
                    ..Default::default()
                };
                for c in docker.list_containers(Some(opts)).await.unwrap_or_default() {
                    let Some(id) = c.id else { continue };
                    let rm = RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    };
                    if let Err(e) = docker.remove_container(&id, Some(rm)).await {
                        eprintln!("cannot remove test container {id}: {e}");
                    }
                }
            });
        })
        .join();
        if done.is_err() {
            eprintln!("container clean-up thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_headers_have_valid_checksums_and_padding() {
        let t = tar(&[("a", b"hello", 0o755)]);
        assert_eq!(t.len(), 512 + 512 + 1024);
        let h = &t[..512];
        let stored =
            u32::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap().trim(), 8).unwrap();
        let mut copy = h.to_vec();
        copy[148..156].fill(b' ');
        assert_eq!(stored, copy.iter().map(|&b| u32::from(b)).sum::<u32>());
        assert_eq!(&t[512..517], b"hello");
    }
}
