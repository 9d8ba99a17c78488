//! Validated user ids.
//!
//! A user id becomes a directory name, part of a container name and part of a
//! socket path, so it is checked once here and carried as [`UserId`].

use std::fmt;
use thiserror::Error;

/// Longest accepted user id, in bytes.
pub const MAX_USER_ID_LEN: usize = 64;

/// A user id that is safe as a path component and a container-name part.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

/// Why a user id was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum UserIdError {
    /// Empty string.
    #[error("User id must not be empty")]
    Empty,
    /// Over [`MAX_USER_ID_LEN`] bytes.
    #[error("User id is {len} bytes, longer than the {max}-byte limit")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `.` or `..`, or a character outside `[A-Za-z0-9_.-]`.
    #[error(
        "User id {id:?} may only contain letters, digits, '_', '-' and '.', and must not be '.' or '..'"
    )]
    Invalid {
        /// The id as given.
        id: String,
    },
}

impl UserId {
    /// Validates `id`.
    ///
    /// Allowed: ASCII letters, digits, `_`, `-`, `.`, not starting with `-` or
    /// `.` — which rules out `/`, `..`, NUL and every control character, and
    /// keeps the id usable in Docker container names.
    pub fn new(id: impl Into<String>) -> Result<Self, UserIdError> {
        let id = id.into();
        if id.is_empty() {
            return Err(UserIdError::Empty);
        }
        if id.len() > MAX_USER_ID_LEN {
            return Err(UserIdError::TooLong {
                len: id.len(),
                max: MAX_USER_ID_LEN,
            });
        }
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        let bad_start = id.starts_with('-') || id.starts_with('.');
        if bad_start || !id.chars().all(ok_char) {
            return Err(UserIdError::Invalid { id });
        }
        Ok(Self(id))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_ids() {
        for id in ["alice", "bob-2", "u_1.x", "A"] {
            assert_eq!(UserId::new(id).unwrap().as_str(), id);
        }
    }

    #[test]
    fn refuses_traversal_and_control_characters() {
        assert_eq!(UserId::new(""), Err(UserIdError::Empty));
        for id in ["..", ".", "a/b", "../x", "a\0b", "a\nb", "-rf", "a b", "é"] {
            assert!(
                matches!(UserId::new(id), Err(UserIdError::Invalid { .. })),
                "{id:?} accepted"
            );
        }
        assert!(matches!(
            UserId::new("x".repeat(65)),
            Err(UserIdError::TooLong { len: 65, max: 64 })
        ));
        assert!(UserId::new("x".repeat(64)).is_ok());
    }
}
