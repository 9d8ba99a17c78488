//! Config errors: each names the file and, where there is one, the key.
//!
//! Keys are dotted paths as they would be written in the file
//! (`guest_images.oxydra_vm`, `resources.max_memory_mib`,
//! `credential_refs."odd.name"`). Positions are 1-based line and column
//! (columns count characters, not bytes).

use crate::user::UserIdError;
use std::fmt;
use std::path::PathBuf;
use thiserror::Error;

/// A 1-based position in a config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// The TOML library's error, displayed as its one-line message (the file,
/// position and key are already in the [`ConfigError`] that carries it).
#[derive(Debug)]
pub struct TomlError(Box<toml::de::Error>);

impl TomlError {
    pub(super) fn new(error: toml::de::Error) -> Self {
        Self(Box::new(error))
    }

    /// The underlying error (with its byte span).
    pub fn inner(&self) -> &toml::de::Error {
        &self.0
    }
}

impl fmt::Display for TomlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.message().trim_end())
    }
}

impl std::error::Error for TomlError {}

/// Why a config file was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable, not UTF-8).
    #[error("Cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The config path could not be made absolute.
    #[error("Cannot resolve config path {path}")]
    Resolve {
        /// The path as given.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("TOML syntax error in {path}{}", at_suffix(.at))]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Where, when the parser knows.
        at: Option<Location>,
        /// The parser's error (without the source snippet).
        #[source]
        source: TomlError,
    },
    /// A key the format does not have.
    #[error("Unknown key `{key}` in {path} at {at}")]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// Dotted path of the key.
        key: String,
        /// Where the key is.
        at: Location,
        /// The deserializer's error (lists the keys that are allowed).
        #[source]
        source: TomlError,
    },
    /// A value of the wrong type or shape: a string where a number belongs,
    /// an unknown enum value (`policy = "sometimes"`), or a table missing a
    /// required key (`[process]` without `runtime`).
    #[error("Wrong type for `{}` in {path}{}", .key.as_deref().unwrap_or("<document>"), at_suffix(.at))]
    WrongType {
        /// The file.
        path: PathBuf,
        /// Dotted path of the refused value; `None` for the document itself.
        key: Option<String>,
        /// Where the value is, when known.
        at: Option<Location>,
        /// The deserializer's error (names the expected type).
        #[source]
        source: TomlError,
    },
    /// An image reference is empty.
    #[error("Image reference `{key}` in {path} must not be empty")]
    EmptyImage {
        /// The file.
        path: PathBuf,
        /// `guest_images.oxydra_vm` or `guest_images.shell_vm`.
        key: &'static str,
    },
    /// A program is empty.
    #[error("Program `{key}` in {path} must not be empty")]
    EmptyProgram {
        /// The file.
        path: PathBuf,
        /// For example `process.runtime.program`.
        key: &'static str,
    },
    /// A path value is empty.
    #[error("Path `{key}` in {path} must not be empty")]
    EmptyPath {
        /// The file.
        path: PathBuf,
        /// For example `workspace_root` or `users.alice.config_path`.
        key: String,
    },
    /// A number that must be positive is zero.
    #[error("`{key}` in {path} must be greater than zero")]
    Zero {
        /// The file.
        path: PathBuf,
        /// For example `resources.max_memory_mib` or `restart.window_secs`.
        key: &'static str,
    },
    /// `restart.backoff_initial_ms` is above `restart.backoff_max_ms`.
    #[error(
        "`restart.backoff_initial_ms` ({initial_ms}) in {path} is greater than `restart.backoff_max_ms` ({max_ms})"
    )]
    BackoffOrder {
        /// The file.
        path: PathBuf,
        /// `backoff_initial_ms`.
        initial_ms: u64,
        /// `backoff_max_ms`.
        max_ms: u64,
    },
    /// A `[users.<id>]` table names an invalid user id.
    #[error("Invalid user id in `[users.{id:?}]` in {path}")]
    InvalidUserId {
        /// The file.
        path: PathBuf,
        /// The id as written.
        id: String,
        /// Why it is invalid.
        #[source]
        source: UserIdError,
    },
    /// A `[credential_refs]` entry has an empty name.
    #[error("A key in `credential_refs` in {path} is empty")]
    EmptyCredentialName {
        /// The file.
        path: PathBuf,
    },
    /// A `[credential_refs]` entry has an empty reference.
    #[error("Credential reference `credential_refs.{name}` in {path} must not be empty")]
    EmptyCredentialRef {
        /// The file.
        path: PathBuf,
        /// The credential's name.
        name: String,
    },
    /// An environment variable name is empty or contains `=` or NUL (or,
    /// for a variable the runner reads, is not `[A-Za-z_][A-Za-z0-9_]*`).
    #[error("Invalid environment variable name {name:?} in `{key}` in {path}")]
    InvalidEnvName {
        /// The file.
        path: PathBuf,
        /// For example `process.runtime.env` or `channels.telegram.bot_token_env`.
        key: String,
        /// The name as written.
        name: String,
    },
    /// `config_version` is not a version this runner reads.
    #[error(
        "Unsupported `config_version` {value:?} in {path}: this runner reads major version 1 (for example \"1.0.1\")"
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version as written.
        value: String,
    },
    /// `behavior.timezone` is not an IANA time zone name.
    #[error(
        "Invalid `behavior.timezone` {value:?} in {path}: expected an IANA name such as \"UTC\" or \"Europe/Berlin\""
    )]
    InvalidTimezone {
        /// The file.
        path: PathBuf,
        /// The value as written.
        value: String,
    },
    /// `[firecracker] chroot_base` lies below `workspace_root`.
    #[error(
        "`firecracker.chroot_base` {chroot_base} in {path} is inside workspace_root \
         {workspace_root}; leave it unset (jails then go to each user's run/) or move it out"
    )]
    ChrootBaseInWorkspace {
        /// The file.
        path: PathBuf,
        /// The resolved chroot base.
        chroot_base: PathBuf,
        /// The resolved workspace root.
        workspace_root: PathBuf,
    },
    /// `[guest_identity]` of `runner.toml` gives no usable range.
    #[error(
        "`guest_identity.uid_base` ({base}) and `guest_identity.uid_count` ({count}) in {path} must give a non-empty range of uids between 1 and 2^31"
    )]
    GuestIdRange {
        /// The file.
        path: PathBuf,
        /// `uid_base`.
        base: u64,
        /// `uid_count`.
        count: u64,
    },
    /// A per-user guest uid or gid is 0 without `allow_root`.
    #[error(
        "`{key}` in {path} is 0 (root); guests run as root only with `guest_identity.allow_root = true`, which is unsafe"
    )]
    GuestIdRoot {
        /// The file.
        path: PathBuf,
        /// `guest_identity.uid` or `guest_identity.gid`.
        key: &'static str,
    },
    /// `[guest_identity]` of a per-user file combines keys that contradict.
    #[error("`guest_identity` in {path}: {conflict}")]
    GuestIdentityKeys {
        /// The file.
        path: PathBuf,
        /// What contradicts what.
        conflict: &'static str,
    },
    /// Two users' files give the same guest uid.
    #[error(
        "Users {first} and {second} registered in {path} both have guest uid {uid}; each user needs its own"
    )]
    SharedGuestUid {
        /// `runner.toml`.
        path: PathBuf,
        /// The uid.
        uid: u32,
        /// One user.
        first: String,
        /// The other.
        second: String,
    },
    /// A `[readiness.<guest>]` table names neither or both of `file` and
    /// `socket`.
    #[error("`readiness.{role}` in {path} needs exactly one of `file` and `socket`")]
    ReadinessProbe {
        /// The file.
        path: PathBuf,
        /// The guest (`runtime` or `sidecar`).
        role: runner_types::GuestRole,
    },
    /// A readiness path is not a plain relative path below the user's
    /// directory.
    #[error(
        "`{key}` in {path} must be a relative path below the user's directory without `..`, got {value:?}"
    )]
    ReadinessPath {
        /// The file.
        path: PathBuf,
        /// For example `readiness.runtime.file`.
        key: String,
        /// The value as written.
        value: String,
    },
    /// A readiness timeout is zero.
    #[error("`readiness.{role}.timeout_ms` in {path} must be greater than zero")]
    ReadinessTimeout {
        /// The file.
        path: PathBuf,
        /// The guest.
        role: runner_types::GuestRole,
    },
}

fn at_suffix(at: &Option<Location>) -> String {
    at.map(|at| format!(" at {at}")).unwrap_or_default()
}

impl ConfigError {
    /// The file the error is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            Self::Read { path, .. }
            | Self::Resolve { path, .. }
            | Self::Syntax { path, .. }
            | Self::UnknownKey { path, .. }
            | Self::WrongType { path, .. }
            | Self::EmptyImage { path, .. }
            | Self::EmptyProgram { path, .. }
            | Self::EmptyPath { path, .. }
            | Self::Zero { path, .. }
            | Self::BackoffOrder { path, .. }
            | Self::InvalidUserId { path, .. }
            | Self::EmptyCredentialName { path }
            | Self::EmptyCredentialRef { path, .. }
            | Self::InvalidEnvName { path, .. }
            | Self::UnsupportedVersion { path, .. }
            | Self::InvalidTimezone { path, .. }
            | Self::ChrootBaseInWorkspace { path, .. }
            | Self::GuestIdRange { path, .. }
            | Self::GuestIdRoot { path, .. }
            | Self::GuestIdentityKeys { path, .. }
            | Self::SharedGuestUid { path, .. }
            | Self::ReadinessProbe { path, .. }
            | Self::ReadinessPath { path, .. }
            | Self::ReadinessTimeout { path, .. } => path,
        }
    }
}
