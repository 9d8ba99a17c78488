//! Reading and validating config files: `runner.toml` and the per-user files
//! it names, from raw shapes ([`runner_types::config`]) to [`RunnerConfig`].
//!
//! Relative paths resolve against the directory of the file that names them:
//! `workspace_root`, `[users.<id>] config_path`, the Firecracker templates and
//! `[firecracker] binary`, `jailer` and `chroot_base` against `runner.toml`'s directory, `[mounts]`
//! against the per-user file's directory. A program (`process.*.program`,
//! `firecracker.binary`, `firecracker.jailer`) is a path only when it contains a `/`; a bare name
//! stays bare and is looked up on PATH at launch.

use super::oxydra;
use super::parse::parse_toml;
use super::{
    ConfigError, GuestCommand, GuestImages, LogLimits, ProcessConfig, RestartConfig, RunnerConfig,
    ShutdownTimings, UserConfig,
};
use crate::UserId;
use crate::workspace::MountOverrides;
use runner_types::config::{
    FirecrackerSection, GuestCommandFile, GuestImagesFile, LogsSection, MountsFile, ProcessSection,
    ResourcesFile, RestartSection, RunnerConfigFile, ShutdownSection, UserConfigFile,
};
use runner_types::{ResourceLimits, SandboxTier};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Loads `runner.toml` at `path` and every per-user file it names.
///
/// A relative `path` is taken relative to the current directory.
pub fn load_runner_config(path: &Path) -> Result<RunnerConfig, ConfigError> {
    let path = absolute(path)?;
    let text = read(&path)?;
    parse_runner_config(&text, &path)
}

/// Parses `runner.toml` text; `path` is used in messages and to resolve
/// relative paths. Per-user files it names are read from disk.
pub fn parse_runner_config(text: &str, path: &Path) -> Result<RunnerConfig, ConfigError> {
    let path = absolute(path)?;
    let file: RunnerConfigFile = parse_toml(text, &path)?;
    oxydra::check_version(&path, file.config_version.as_deref())?;
    let base = parent_dir(&path);
    let workspace_root = match &file.workspace_root {
        Some(root) => resolve_path(&path, base, "workspace_root", root)?,
        None => base.join("workspaces"),
    };
    let mut users = BTreeMap::new();
    for (id, registration) in &file.users {
        let user = UserId::new(id.as_str()).map_err(|source| ConfigError::InvalidUserId {
            path: path.clone(),
            id: id.clone(),
            source,
        })?;
        let key = format!("users.{id}.config_path");
        let user_path = resolve_path(&path, base, &key, &registration.config_path)?;
        users.insert(user, load_user_config(&user_path)?);
    }
    super::identity::distinct_uids(&path, &users)?;
    let firecracker = firecracker(&path, base, &file.firecracker, &workspace_root)?;
    Ok(RunnerConfig {
        workspace_root,
        default_tier: file.default_tier.unwrap_or(SandboxTier::Process),
        guest_images: guest_images(&path, base, &file.guest_images)?,
        users,
        process: file
            .process
            .as_ref()
            .map(|p| process(&path, base, p))
            .transpose()?,
        logs: logs(&path, file.logs)?,
        shutdown: shutdown(file.shutdown),
        restart: restart(&path, file.restart)?,
        docker: file.docker,
        firecracker,
        control: file.control,
        readiness: super::readiness::checks(&path, &file.readiness)?,
        notices: oxydra::web_notice(&path, file.web.as_ref())
            .into_iter()
            .collect(),
        guest_identity: super::identity::id_range(&path, file.guest_identity)?,
        source: Some(path),
    })
}

/// Loads one per-user file.
pub fn load_user_config(path: &Path) -> Result<UserConfig, ConfigError> {
    let path = absolute(path)?;
    let text = read(&path)?;
    parse_user_config(&text, &path)
}

/// Parses per-user file text; `path` is used in messages and to resolve
/// relative `[mounts]` paths.
pub fn parse_user_config(text: &str, path: &Path) -> Result<UserConfig, ConfigError> {
    let path = absolute(path)?;
    let file: UserConfigFile = parse_toml(text, &path)?;
    oxydra::check_version(&path, file.config_version.as_deref())?;
    let base = parent_dir(&path);
    let mut credential_refs = BTreeMap::new();
    for (name, reference) in file.credential_refs {
        if name.trim().is_empty() {
            return Err(ConfigError::EmptyCredentialName { path });
        }
        if reference.trim().is_empty() {
            return Err(ConfigError::EmptyCredentialRef { path, name });
        }
        credential_refs.insert(name, reference);
    }
    Ok(UserConfig {
        mounts: mounts(&path, base, &file.mounts)?,
        resources: resources(&path, file.resources)?,
        credential_refs,
        sandbox_tier: file.behavior.sandbox_tier,
        shell_enabled: file.behavior.shell_enabled.unwrap_or(true),
        browser_enabled: file.behavior.browser_enabled.unwrap_or(false),
        timezone: oxydra::timezone(&path, file.behavior.timezone.as_deref())?,
        channel_secrets: oxydra::channel_secrets(&path, &file.channels)?,
        guest_identity: super::identity::user_choice(&path, file.guest_identity)?,
        readiness: super::readiness::checks(&path, &file.readiness)?,
    })
}

fn guest_images(
    path: &Path,
    base: &Path,
    images: &GuestImagesFile,
) -> Result<GuestImages, ConfigError> {
    for (key, image) in [
        ("guest_images.oxydra_vm", &images.oxydra_vm),
        ("guest_images.shell_vm", &images.shell_vm),
    ] {
        if image.trim().is_empty() {
            return Err(ConfigError::EmptyImage {
                path: path.to_path_buf(),
                key,
            });
        }
    }
    let template = |key: &str, value: &Option<String>| {
        value
            .as_deref()
            .map(|v| resolve_path(path, base, key, v))
            .transpose()
    };
    Ok(GuestImages {
        oxydra_vm: images.oxydra_vm.clone(),
        shell_vm: images.shell_vm.clone(),
        firecracker_oxydra_vm_config: template(
            "guest_images.firecracker_oxydra_vm_config",
            &images.firecracker_oxydra_vm_config,
        )?,
        firecracker_shell_vm_config: template(
            "guest_images.firecracker_shell_vm_config",
            &images.firecracker_shell_vm_config,
        )?,
    })
}

/// `[firecracker]` with its programs and `chroot_base` resolved. A
/// `chroot_base` below `workspace_root` is refused: guests can write parts
/// of it, and a jail must be reachable only by the runner.
fn firecracker(
    path: &Path,
    base: &Path,
    section: &FirecrackerSection,
    workspace_root: &Path,
) -> Result<FirecrackerSection, ConfigError> {
    let mut fc = section.clone();
    if let Some(binary) = &fc.binary {
        let program = resolve_program(path, base, "firecracker.binary", binary)?;
        fc.binary = Some(program.to_string_lossy().into_owned());
    }
    if let Some(jailer) = &fc.jailer {
        let program = resolve_program(path, base, "firecracker.jailer", jailer)?;
        fc.jailer = Some(program.to_string_lossy().into_owned());
    }
    if let Some(chroot_base) = &fc.chroot_base {
        let dir = resolve_path(path, base, "firecracker.chroot_base", chroot_base)?;
        if lexically_normal(&dir).starts_with(lexically_normal(workspace_root)) {
            return Err(ConfigError::ChrootBaseInWorkspace {
                path: path.to_path_buf(),
                chroot_base: dir,
                workspace_root: workspace_root.to_path_buf(),
            });
        }
        fc.chroot_base = Some(dir.to_string_lossy().into_owned());
    }
    Ok(fc)
}

/// `p` with `.` removed and `..` applied, without touching the disk.
fn lexically_normal(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn process(path: &Path, base: &Path, p: &ProcessSection) -> Result<ProcessConfig, ConfigError> {
    Ok(ProcessConfig {
        runtime: command(path, base, &p.runtime, PROCESS_KEYS[0])?,
        sidecar: p
            .sidecar
            .as_ref()
            .map(|s| command(path, base, s, PROCESS_KEYS[1]))
            .transpose()?,
    })
}

/// `(program key, env key)` for the runtime and the sidecar.
const PROCESS_KEYS: [(&str, &str); 2] = [
    ("process.runtime.program", "process.runtime.env"),
    ("process.sidecar.program", "process.sidecar.env"),
];

fn command(
    path: &Path,
    base: &Path,
    c: &GuestCommandFile,
    (program_key, env_key): (&'static str, &'static str),
) -> Result<GuestCommand, ConfigError> {
    if let Some(name) = c
        .env
        .keys()
        .find(|k| k.is_empty() || k.contains(['=', '\0']))
    {
        return Err(ConfigError::InvalidEnvName {
            path: path.to_path_buf(),
            key: env_key.to_owned(),
            name: name.clone(),
        });
    }
    Ok(GuestCommand {
        program: resolve_program(path, base, program_key, &c.program)?,
        args: c.args.clone(),
        env: c.env.clone(),
    })
}

fn logs(path: &Path, l: LogsSection) -> Result<LogLimits, ConfigError> {
    positive(path, "logs.max_file_bytes", l.max_file_bytes)?;
    positive(path, "logs.max_files", l.max_files.into())?;
    Ok(LogLimits {
        max_file_bytes: l.max_file_bytes,
        max_files: l.max_files,
    })
}

fn shutdown(s: ShutdownSection) -> ShutdownTimings {
    ShutdownTimings {
        grace: Duration::from_millis(s.grace_ms),
        log_drain: Duration::from_millis(s.log_drain_ms),
    }
}

fn restart(path: &Path, r: RestartSection) -> Result<RestartConfig, ConfigError> {
    positive(path, "restart.window_secs", r.window_secs)?;
    if r.backoff_initial_ms > r.backoff_max_ms {
        return Err(ConfigError::BackoffOrder {
            path: path.to_path_buf(),
            initial_ms: r.backoff_initial_ms,
            max_ms: r.backoff_max_ms,
        });
    }
    Ok(RestartConfig {
        policy: r.policy,
        max_restarts: r.max_restarts,
        window: Duration::from_secs(r.window_secs),
        backoff_initial: Duration::from_millis(r.backoff_initial_ms),
        backoff_max: Duration::from_millis(r.backoff_max_ms),
    })
}

fn mounts(path: &Path, base: &Path, m: &MountsFile) -> Result<MountOverrides, ConfigError> {
    let one = |key: &str, value: &Option<String>| {
        value
            .as_deref()
            .map(|v| resolve_path(path, base, key, v))
            .transpose()
    };
    Ok(MountOverrides {
        shared: one("mounts.shared", &m.shared)?,
        tmp: one("mounts.tmp", &m.tmp)?,
        vault: one("mounts.vault", &m.vault)?,
    })
}

fn resources(path: &Path, r: ResourcesFile) -> Result<ResourceLimits, ConfigError> {
    for (key, value) in [
        ("resources.max_vcpus", r.max_vcpus.map(u64::from)),
        ("resources.max_memory_mib", r.max_memory_mib),
        ("resources.max_processes", r.max_processes.map(u64::from)),
    ] {
        if let Some(v) = value {
            positive(path, key, v)?;
        }
    }
    Ok(r.into())
}

fn positive(path: &Path, key: &'static str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::Zero {
            path: path.to_path_buf(),
            key,
        });
    }
    Ok(())
}

/// A path value: absolute as written, or relative to `base`.
fn resolve_path(path: &Path, base: &Path, key: &str, value: &str) -> Result<PathBuf, ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::EmptyPath {
            path: path.to_path_buf(),
            key: key.to_owned(),
        });
    }
    Ok(base.join(value))
}

/// A program: a path (resolved like [`resolve_path`]) when it contains `/`,
/// otherwise a bare name for PATH lookup at launch.
fn resolve_program(
    path: &Path,
    base: &Path,
    key: &'static str,
    value: &str,
) -> Result<PathBuf, ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::EmptyProgram {
            path: path.to_path_buf(),
            key,
        });
    }
    Ok(if value.contains('/') {
        base.join(value)
    } else {
        PathBuf::from(value)
    })
}

fn absolute(path: &Path) -> Result<PathBuf, ConfigError> {
    std::path::absolute(path).map_err(|source| ConfigError::Resolve {
        path: path.to_path_buf(),
        source,
    })
}

/// Directory of an absolute file path (`/` for a file at the root).
fn parent_dir(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("/"))
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}
