//! Sets `RUNNER_BIN_VERSION` for `--version`: the package version, plus the
//! git revision (`0.1.0 (git 1a2b3c4)`) when the source is a git checkout
//! and git is installed; otherwise the version alone, silently.

use std::path::Path;
use std::process::Command;

fn main() {
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let repo = Path::new(&manifest_dir).parent().unwrap_or(Path::new("."));
    let full = match revision(repo) {
        Some(rev) => format!("{version} (git {rev})"),
        None => version,
    };
    println!("cargo:rustc-env=RUNNER_BIN_VERSION={full}");
    println!("cargo:rerun-if-changed=build.rs");
}

/// The short revision of `repo`'s HEAD; asks cargo to rebuild when HEAD
/// or the branch it points at moves.
fn revision(repo: &Path) -> Option<String> {
    // A checkout has `.git` (a directory, or a file in a worktree).
    if !repo.join(".git").exists() {
        return None;
    }
    let rev = git(repo, &["rev-parse", "--short", "HEAD"])?;
    for path in ["HEAD", "packed-refs"] {
        if let Some(p) = git(repo, &["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={}", repo.join(p).display());
        }
    }
    if let Some(branch) = git(repo, &["symbolic-ref", "-q", "HEAD"])
        && let Some(p) = git(repo, &["rev-parse", "--git-path", &branch])
    {
        println!("cargo:rerun-if-changed={}", repo.join(p).display());
    }
    Some(rev)
}

fn git(repo: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_owned())
}
