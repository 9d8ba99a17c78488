//! The host identity a guest runs under.
//!
//! When the runner is root, every guest runs under an unprivileged uid/gid
//! of its user's own (see the identity allocation in this module); when the
//! runner is not root, guests run as the runner's own uid and
//! [`crate::backend::LaunchSpec::run_as`] is `None`.

/// The uid and gid a guest runs as on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GuestUser {
    /// Host uid (never 0 unless the operator asked for it explicitly).
    pub uid: u32,
    /// Host primary gid; supplementary groups are cleared.
    pub gid: u32,
}
