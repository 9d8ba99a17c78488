//! Guest-side envelope reader: one call that finds the bootstrap envelope on
//! whichever transport the runner used.
//!
//! Order: `--bootstrap-stdin` (length-prefixed frame on stdin), then
//! `--bootstrap-file <path>` or `$OXYDRA_BOOTSTRAP_FILE` (JSON file), then the
//! kernel command line key `oxydra.bootstrap_b64=` in `/proc/cmdline`.
//!
//! ```no_run
//! let (envelope, transport) = runner_types::reader::read_envelope()?;
//! eprintln!("bootstrap via {transport:?} for {}", envelope.user_id);
//! # Ok::<(), runner_types::reader::ReadError>(())
//! ```

use crate::envelope::{BootstrapEnvelope, EnvelopeError};
use crate::frame::{FrameError, MAX_ENVELOPE_FRAME};
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use std::io::Read;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Kernel command-line key that carries the base64 envelope.
pub const CMDLINE_KEY: &str = "oxydra.bootstrap_b64";
/// Environment variable naming the envelope file.
pub const FILE_ENV: &str = "OXYDRA_BOOTSTRAP_FILE";
/// Where containers see the envelope file.
pub const CONTAINER_FILE_PATH: &str = "/run/oxydra/bootstrap";
/// Flag selecting the stdin transport.
pub const STDIN_FLAG: &str = "--bootstrap-stdin";
/// Flag naming the envelope file.
pub const FILE_FLAG: &str = "--bootstrap-file";

const PROC_CMDLINE: &str = "/proc/cmdline";

/// Base64 engine for the command-line transport: standard alphabet, padding
/// optional on input.
pub const CMDLINE_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The transport an envelope was found on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Length-prefixed frame on stdin.
    Stdin,
    /// JSON file at this path.
    File(PathBuf),
    /// `oxydra.bootstrap_b64=` on the kernel command line.
    KernelCmdline,
}

/// Why no envelope could be read.
#[derive(Debug, Error)]
pub enum ReadError {
    /// No flag, no env var, and no command-line key.
    #[error(
        "No bootstrap transport: pass --bootstrap-stdin or --bootstrap-file, set OXYDRA_BOOTSTRAP_FILE, or boot with oxydra.bootstrap_b64="
    )]
    NoTransport,
    /// `--bootstrap-file` without a path.
    #[error("--bootstrap-file needs a path")]
    MissingFileArg,
    /// Reading stdin failed.
    #[error("Cannot read the bootstrap frame from stdin")]
    Stdin(#[source] std::io::Error),
    /// Stdin ended inside the frame.
    #[error("Bootstrap frame on stdin is incomplete")]
    ShortFrame(#[source] FrameError),
    /// Reading the file failed.
    #[error("Cannot read bootstrap file {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is over the size cap.
    #[error("Bootstrap file {path} is {len} bytes, over the {max}-byte limit")]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size (for pipes and special files: the bytes read before giving up).
        len: u64,
        /// The cap.
        max: usize,
    },
    /// Reading `/proc/cmdline` failed.
    #[error("Cannot read the kernel command line")]
    Cmdline(#[source] std::io::Error),
    /// The command-line value is not base64.
    #[error("oxydra.bootstrap_b64 is not valid base64")]
    Base64(#[source] base64::DecodeError),
    /// The command-line value decodes to more than the cap.
    #[error("oxydra.bootstrap_b64 decodes to {len} bytes, over the {max}-byte limit")]
    CmdlineTooLarge {
        /// Decoded size.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The bytes were found but are not a valid envelope.
    #[error("Invalid bootstrap envelope")]
    Envelope(#[from] EnvelopeError),
}

/// Where the reader looks: the process's arguments and environment, and the
/// kernel command-line file. Built from the real process by
/// [`Sources::from_process`], or by hand in tests.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Command-line arguments (without the program name).
    pub args: Vec<String>,
    /// Value of `$OXYDRA_BOOTSTRAP_FILE`, if set.
    pub file_env: Option<String>,
    /// Path of the kernel command line (`/proc/cmdline`), if it should be tried.
    pub cmdline_path: Option<PathBuf>,
}

impl Sources {
    /// Arguments, `$OXYDRA_BOOTSTRAP_FILE` and `/proc/cmdline` of this process.
    pub fn from_process() -> Self {
        Self {
            args: std::env::args().skip(1).collect(),
            file_env: std::env::var(FILE_ENV).ok().filter(|v| !v.is_empty()),
            cmdline_path: Some(PathBuf::from(PROC_CMDLINE)),
        }
    }

    /// Finds and reads the envelope; `stdin` is used only for `--bootstrap-stdin`.
    pub fn read(&self, stdin: impl Read) -> Result<(BootstrapEnvelope, Transport), ReadError> {
        if self.args.iter().any(|a| a == STDIN_FLAG) {
            return Ok((read_frame(stdin)?, Transport::Stdin));
        }
        if let Some(path) = self.file_arg()? {
            return Ok((read_file(&path)?, Transport::File(path)));
        }
        if let Some(path) = &self.file_env {
            let path = PathBuf::from(path);
            return Ok((read_file(&path)?, Transport::File(path)));
        }
        if let Some(path) = &self.cmdline_path {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    if let Some(env) = parse_cmdline(&text)? {
                        return Ok((env, Transport::KernelCmdline));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ReadError::Cmdline(e)),
            }
        }
        Err(ReadError::NoTransport)
    }

    fn file_arg(&self) -> Result<Option<PathBuf>, ReadError> {
        let mut it = self.args.iter();
        while let Some(a) = it.next() {
            if a == FILE_FLAG {
                return match it.next() {
                    Some(p) if !p.starts_with("--") => Ok(Some(PathBuf::from(p))),
                    _ => Err(ReadError::MissingFileArg),
                };
            }
            if let Some(p) = a.strip_prefix("--bootstrap-file=") {
                if p.is_empty() {
                    return Err(ReadError::MissingFileArg);
                }
                return Ok(Some(PathBuf::from(p)));
            }
        }
        Ok(None)
    }
}

/// Reads the envelope for this process (see the module docs for the order).
pub fn read_envelope() -> Result<(BootstrapEnvelope, Transport), ReadError> {
    Sources::from_process().read(std::io::stdin().lock())
}

/// Reads exactly one length-prefixed frame from `r` and parses it.
///
/// Reads no further than the frame, so the rest of the stream stays usable.
pub fn read_frame(mut r: impl Read) -> Result<BootstrapEnvelope, ReadError> {
    let mut head = [0u8; 4];
    let got = read_full(&mut r, &mut head)?;
    if got < 4 {
        return Err(ReadError::ShortFrame(FrameError::TooShort { actual: got }));
    }
    let len = u32::from_be_bytes(head) as usize;
    if len > MAX_ENVELOPE_FRAME {
        return Err(ReadError::Envelope(EnvelopeError::Frame(
            FrameError::TooLarge {
                len,
                max: MAX_ENVELOPE_FRAME,
            },
        )));
    }
    let mut payload = vec![0u8; len];
    let got = read_full(&mut r, &mut payload)?;
    if got < len {
        return Err(ReadError::ShortFrame(FrameError::LengthMismatch {
            prefixed: len,
            actual: got,
        }));
    }
    Ok(BootstrapEnvelope::from_json(&payload)?)
}

/// Reads an envelope JSON file.
pub fn read_file(path: &Path) -> Result<BootstrapEnvelope, ReadError> {
    let file_err = |source| ReadError::File {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(file_err)?;
    let len = file.metadata().map_err(file_err)?.len();
    if len > MAX_ENVELOPE_FRAME as u64 {
        return Err(ReadError::FileTooLarge {
            path: path.to_path_buf(),
            len,
            max: MAX_ENVELOPE_FRAME,
        });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(MAX_ENVELOPE_FRAME as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(file_err)?;
    // Pipes and special files report a size of 0: check what was read too.
    if bytes.len() > MAX_ENVELOPE_FRAME {
        return Err(ReadError::FileTooLarge {
            path: path.to_path_buf(),
            len: bytes.len() as u64,
            max: MAX_ENVELOPE_FRAME,
        });
    }
    Ok(BootstrapEnvelope::from_json(&bytes)?)
}

/// Finds `oxydra.bootstrap_b64=` in a kernel command line and decodes it.
///
/// `Ok(None)` when the key is absent. When the key appears more than once the
/// last one wins, as the kernel itself treats repeated parameters.
pub fn parse_cmdline(cmdline: &str) -> Result<Option<BootstrapEnvelope>, ReadError> {
    let prefix = format!("{CMDLINE_KEY}=");
    let Some(value) = cmdline
        .split_ascii_whitespace()
        .filter_map(|tok| tok.strip_prefix(prefix.as_str()))
        .next_back()
    else {
        return Ok(None);
    };
    // Each base64 character carries 6 bits, padding none: this is the exact
    // decoded size of valid input, so refuse before allocating.
    let digits = value.trim_end_matches('=').len();
    let decoded_len = digits / 4 * 3 + digits % 4 * 3 / 4;
    if decoded_len > MAX_ENVELOPE_FRAME {
        return Err(ReadError::CmdlineTooLarge {
            len: decoded_len,
            max: MAX_ENVELOPE_FRAME,
        });
    }
    let json = CMDLINE_BASE64.decode(value).map_err(ReadError::Base64)?;
    if json.len() > MAX_ENVELOPE_FRAME {
        return Err(ReadError::CmdlineTooLarge {
            len: json.len(),
            max: MAX_ENVELOPE_FRAME,
        });
    }
    Ok(Some(BootstrapEnvelope::from_json(&json)?))
}

/// The command-line token for an envelope: `oxydra.bootstrap_b64=<base64>`.
pub fn cmdline_token(envelope: &BootstrapEnvelope) -> Result<String, EnvelopeError> {
    Ok(format!(
        "{CMDLINE_KEY}={}",
        CMDLINE_BASE64.encode(envelope.to_json()?)
    ))
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize, ReadError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Stdin(e)),
        }
    }
    Ok(filled)
}
