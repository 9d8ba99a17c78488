//! The guest's command line, environment and process attributes, built as
//! plain data (unit-tested without running anything) and then as a
//! [`std::process::Command`].
//!
//! Process attributes, and why:
//! - **Own process group** (`setpgid(0, 0)`): stop signals the whole group, so
//!   whatever the guest forks is stopped with it.
//! - **Parent-death signal** (`PR_SET_PDEATHSIG` = SIGKILL): a guest never
//!   outlives a runner that died without stopping it. After setting it the
//!   child re-checks its parent pid: if the runner died between `fork` and
//!   `prctl`, the child is already orphaned and refuses to exec.
//!
//!   Caveat: Linux fires the signal when the *thread* that forked exits, not
//!   the process. The launch runs on a Tokio worker thread, which lives as
//!   long as its runtime, so guests are also killed when the runtime that
//!   launched them shuts down — which is the intended lifetime anyway. An
//!   embedding program must not launch from a short-lived thread (for
//!   example inside `spawn_blocking`). Grandchildren do not inherit the
//!   setting (the kernel clears it on fork); the process-group kill covers them.
//! - **Cleared environment**: only the configured `env`, then the session's
//!   extra env (`-e` / `--env-file`), which wins on a clash.
//! - **Working directory**: the user's workspace directory
//!   `<workspace_root>/<user_id>`, so relative paths a guest writes land in
//!   its own workspace and never in the runner's directory.
//! - **stdin, stdout, stderr piped**: stdin carries the bootstrap frame and is
//!   then closed; stdout and stderr are the guest's logs.

use crate::UserId;
use crate::config::GuestCommand;
use runner_types::reader::STDIN_FLAG;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

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

/// A ready-to-spawn command with every attribute from the module docs.
pub(super) fn build_command(
    program: &Path,
    args: &[OsString],
    env: &BTreeMap<String, String>,
    work_dir: &Path,
) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(env)
        .current_dir(work_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    crate::backend::parent_death::arm(&mut cmd);
    cmd
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
