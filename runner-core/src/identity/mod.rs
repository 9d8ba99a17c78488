//! The host identity a guest runs under.
//!
//! When the runner is root, every guest of a user runs under an unprivileged
//! uid/gid of that user's own, so guests of two users never share a uid and
//! no guest is root. Where it comes from, first match wins:
//!
//! 1. the per-user file's `[guest_identity] allow_root = true` (unsafe): the
//!    guests run as the runner, root; health reports [`GUEST_RUNS_AS_ROOT`];
//! 2. the per-user file's `[guest_identity] uid` (and `gid`, default the
//!    uid): used as given, even when it is an existing account (a dedicated
//!    service account, say), but never uid 0 and never a uid recorded for
//!    another user;
//! 3. on the container tier, `[docker] user` from `runner.toml`, which every
//!    user's containers then share (kept for compatibility; prefer 2);
//! 4. otherwise an allocated uid from `runner.toml`'s `[guest_identity]`
//!    range (`uid_base`, `uid_count`; defaults [`DEFAULT_UID_BASE`] and
//!    [`DEFAULT_UID_COUNT`]), with gid = uid as a private group. The lowest
//!    uid that is neither a user nor a group in the host's account
//!    databases, nor recorded for another user, nor another user's explicit
//!    uid is taken and recorded in `<workspace_root>/.guest-ids` (see
//!    `store.rs`), so it survives restarts and config reloads: a recorded
//!    uid is kept even when the range changes later. A recorded uid that
//!    has since become an account is refused, never silently replaced.
//!
//! When the runner is not root it cannot switch uids: guests run as the
//! runner's own uid and [`crate::backend::LaunchSpec::run_as`] is `None`.

mod accounts;
mod resolve;
mod store;

pub use accounts::{ACCOUNT_CACHE_TTL, AccountCache};
pub use resolve::{
    IdentityDecision, IdentityError, resolve_guest_user, resolve_guest_user_cached,
    resolve_guest_user_in,
};
pub use store::STORE_FILE_NAME;

use runner_types::DegradedReason;

/// Default first uid of the allocation range. Chosen above systemd's
/// container range (524288–1879048191), below its "foreign" range
/// (2147352576–2147418111) and below 2^31 (some tools treat ids as signed),
/// and far above login accounts and the usual `/etc/subuid` blocks
/// (100000 + 65536·n).
pub const DEFAULT_UID_BASE: u32 = 1_900_000_000;
/// Default size of the allocation range.
pub const DEFAULT_UID_COUNT: u32 = 65_536;
/// Every allocated uid is below this (2^31).
pub const UID_CEILING: u32 = 1 << 31;

/// Degraded-reason code: a user's guests run as root
/// (`[guest_identity] allow_root = true` while the runner is root).
pub const GUEST_RUNS_AS_ROOT: &str = "guest_runs_as_root";

/// The uid and gid a guest runs as on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GuestUser {
    /// Host uid (never 0 unless the operator asked for it explicitly).
    pub uid: u32,
    /// Host primary gid; supplementary groups are cleared.
    pub gid: u32,
}

impl GuestUser {
    /// `uid:gid`, as Docker's `User` takes it.
    pub fn docker_user(&self) -> String {
        format!("{}:{}", self.uid, self.gid)
    }
}

/// The validated `[guest_identity]` range of `runner.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestIdRange {
    /// First uid (> 0).
    pub base: u32,
    /// Number of uids (> 0; `base + count <= UID_CEILING`).
    pub count: u32,
}

impl Default for GuestIdRange {
    fn default() -> Self {
        Self {
            base: DEFAULT_UID_BASE,
            count: DEFAULT_UID_COUNT,
        }
    }
}

impl GuestIdRange {
    /// Every uid of the range, in order.
    pub fn uids(&self) -> impl Iterator<Item = u32> {
        self.base..self.base + self.count
    }
}

/// What a per-user file asks for (validated).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GuestIdentityChoice {
    /// An allocated uid from the range (or `[docker] user` on the
    /// container tier).
    #[default]
    Allocated,
    /// `uid` / `gid` as configured (never 0).
    Explicit(GuestUser),
    /// `allow_root = true`: the guests run as root. Unsafe.
    Root,
}

/// [`GUEST_RUNS_AS_ROOT`].
pub fn guest_runs_as_root() -> DegradedReason {
    DegradedReason {
        code: GUEST_RUNS_AS_ROOT.into(),
        detail: "guest_identity.allow_root: this user's guests run as root on the host".into(),
    }
}
