//! The guest's command line, environment and process attributes, built as
//! plain data (unit-tested without running anything) and then handed to the
//! spawn (`spawn.rs`, `child.rs`).
//!
//! Process attributes, and why:
//! - **Own process group** (`setpgid(0, 0)`): stop signals the whole group, so
//!   whatever the guest forks is stopped with it.
//! - **Guest identity** (`run_as`): when the runner is root, the child drops
//!   its supplementary groups, then sets the guest's gid and uid, before
//!   anything else below runs.
//! - **Parent-death signal** (`PR_SET_PDEATHSIG` = SIGKILL): a guest never
//!   outlives a runner that died without stopping it. It is set after the
//!   identity drop (which would clear it), and then the child re-checks its
//!   parent pid: if the runner died between the child's creation and
//!   `prctl`, the child is already orphaned and refuses to exec.
//!
//!   Linux fires the signal when the *thread* that created the child exits,
//!   not the process. In a runner holding many descriptors, guests are
//!   created on the backend's spawn thread (`spawn_thread.rs`), which ends
//!   only once the backend and every guest it created are gone. Otherwise
//!   the launch runs on a Tokio worker thread, which lives as long as its
//!   runtime, so those guests are killed when the runtime that launched
//!   them shuts down — the intended lifetime anyway; an embedding program
//!   must not launch from a short-lived thread (inside `spawn_blocking`,
//!   say).
//!   Grandchildren do not inherit the setting (the kernel clears it on
//!   fork); the process-group kill covers them.
//! - **Cleared environment**: only the configured `env`, then the session's
//!   extra env (`-e` / `--env-file`), which wins on a clash.
//! - **Working directory**: the user's workspace directory
//!   `<workspace_root>/<user_id>`, so relative paths a guest writes land in
//!   its own workspace and never in the runner's directory.
//! - **stdin, stdout, stderr piped**: stdin carries the bootstrap frame and is
//!   then closed; stdout and stderr are the guest's logs.
//! - **A clean start** (`clean_start.rs`): umask 077, the runner's original
//!   rlimits plus the guest's own (`RLIMIT_NPROC`, `RLIMIT_CORE = 0`),
//!   `no_new_privs`, and no descriptor but 0, 1 and 2.

use crate::UserId;
use crate::backend::clean_start::StartRlimits;
use crate::config::GuestCommand;
use crate::identity::GuestUser;
use nix::sys::resource::Resource;
use runner_types::ResourceLimits;
use runner_types::reader::STDIN_FLAG;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

/// `<args...> --user-id <id> --workspace-root <user dir> --bootstrap-stdin`,
/// where the user dir is `<workspace_root>/<user_id>`.
pub(super) fn guest_args(cmd: &GuestCommand, user: &UserId, user_dir: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = cmd.args.iter().map(OsString::from).collect();
    args.push("--user-id".into());
    args.push(user.as_str().into());
    args.push("--workspace-root".into());
    args.push(user_dir.into());
    args.push(STDIN_FLAG.into());
    args
}

/// The configured environment, overlaid with the session's extra variables.
pub(super) fn guest_env(
    cmd: &GuestCommand,
    extra: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env = cmd.env.clone();
    env.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// The rlimits a guest starts with: the runner's start values, then
/// `RLIMIT_CORE = 0`, then `RLIMIT_NPROC` = `max_processes`, or the
/// documented default when the guest has a uid of its own. A guest running
/// as the runner's own (unprivileged) uid gets the default only when
/// `max_processes` is set, since the limit counts every process of that uid,
/// the runner's included.
pub(super) fn guest_rlimits(
    start: &StartRlimits,
    resources: &ResourceLimits,
    run_as: Option<GuestUser>,
) -> StartRlimits {
    let limits = start.clone().with(Resource::RLIMIT_CORE, 0, 0);
    let nproc = match (resources.max_processes, run_as) {
        (Some(n), _) => Some(u64::from(n)),
        (None, Some(_)) => Some(u64::from(crate::limits::DEFAULT_MAX_PROCESSES)),
        (None, None) => None,
    };
    match nproc {
        Some(n) => limits.with(Resource::RLIMIT_NPROC, n, n),
        None => limits,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> GuestCommand {
        GuestCommand {
            program: "/bin/guest".into(),
            args: vec!["--role".into(), "sidecar".into()],
            env: BTreeMap::from([("A".into(), "1".into()), ("B".into(), "cfg".into())]),
        }
    }

    #[test]
    fn runner_flags_follow_configured_args() {
        let user = UserId::new("alice").unwrap();
        let args = guest_args(&command(), &user, Path::new("/w s"));
        let want: Vec<OsString> = [
            "--role",
            "sidecar",
            "--user-id",
            "alice",
            "--workspace-root",
            "/w s",
            "--bootstrap-stdin",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        assert_eq!(args, want);
    }

    #[test]
    fn guests_get_no_core_dumps_and_a_process_limit_for_their_own_uid() {
        let start = StartRlimits::capture();
        let none = ResourceLimits::default();
        let guest = Some(GuestUser { uid: 7, gid: 7 });
        let default = u64::from(crate::limits::DEFAULT_MAX_PROCESSES);
        let got = guest_rlimits(&start, &none, guest);
        assert_eq!(got.get(Resource::RLIMIT_CORE), Some((0, 0)));
        assert_eq!(got.get(Resource::RLIMIT_NPROC), Some((default, default)));
        assert_eq!(
            got.get(Resource::RLIMIT_NOFILE),
            start.get(Resource::RLIMIT_NOFILE)
        );
        let own = guest_rlimits(&start, &none, None);
        assert_eq!(
            own.get(Resource::RLIMIT_NPROC),
            start.get(Resource::RLIMIT_NPROC)
        );
        let set = ResourceLimits {
            max_processes: Some(9),
            ..ResourceLimits::default()
        };
        for run_as in [guest, None] {
            let got = guest_rlimits(&start, &set, run_as);
            assert_eq!(got.get(Resource::RLIMIT_NPROC), Some((9, 9)));
        }
    }

    #[test]
    fn extra_env_overrides_configured_env() {
        let extra = BTreeMap::from([("B".into(), "extra".into()), ("C".into(), "3".into())]);
        let env = guest_env(&command(), &extra);
        let want: BTreeMap<String, String> = [("A", "1"), ("B", "extra"), ("C", "3")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(env, want);
    }
}
