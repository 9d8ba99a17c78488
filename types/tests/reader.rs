//! The guest-side envelope reader over all three transports:
//! round trips, and every way a transport can carry something unusable.

use base64::Engine as _;
use runner_types::envelope::EnvelopeError;
use runner_types::frame::{FrameError, MAX_ENVELOPE_FRAME};
use runner_types::reader::{
    CMDLINE_BASE64, CMDLINE_KEY, ReadError, Sources, Transport, cmdline_token, parse_cmdline,
    read_file, read_frame,
};
use runner_types::{
    BootstrapEnvelope, ResolvedMounts, ResourceLimits, RuntimePolicy, SandboxTier, SidecarEndpoint,
    SidecarTransport,
};
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

fn envelope() -> BootstrapEnvelope {
    BootstrapEnvelope {
        user_id: "alice".into(),
        sandbox_tier: SandboxTier::Process,
        workspace_root: "/ws".into(),
        sidecar_endpoint: Some(SidecarEndpoint {
            transport: SidecarTransport::Unix,
            address: "/ws/alice/ipc/shell-daemon.sock".into(),
        }),
        runtime_policy: Some(RuntimePolicy {
            mounts: ResolvedMounts {
                shared: "/ws/alice/shared".into(),
                tmp: "/ws/alice/tmp".into(),
                vault: "/ws/alice/vault".into(),
            },
            resources: ResourceLimits {
                max_vcpus: None,
                max_memory_mib: Some(256),
                max_processes: None,
            },
            credential_refs: Default::default(),
        }),
        startup_status: None,
    }
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Sources that can only find the envelope through `args`.
fn with_args(a: &[&str]) -> Sources {
    Sources {
        args: args(a),
        ..Sources::default()
    }
}

fn frame_of(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

/// A stdin that must never be read.
struct NoStdin;
impl Read for NoStdin {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        panic!("stdin read although --bootstrap-stdin was not given")
    }
}

fn temp_file(contents: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bootstrap");
    std::fs::write(&path, contents).unwrap();
    (dir, path)
}

// ---- round trips -------------------------------------------------------

#[test]
fn stdin_frame_round_trip_leaves_the_rest_unread() {
    let mut input = envelope().to_frame().unwrap();
    input.extend_from_slice(b"after");
    let mut cursor = Cursor::new(input);
    let sources = with_args(&["--user-id", "alice", "--bootstrap-stdin"]);
    let (got, transport) = sources.read(&mut cursor).unwrap();
    assert_eq!(got, envelope());
    assert_eq!(transport, Transport::Stdin);
    let mut rest = String::new();
    cursor.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "after");
}

#[test]
fn file_round_trip_via_flag_both_spellings() {
    let (_dir, path) = temp_file(&envelope().to_json().unwrap());
    let p = path.to_str().unwrap();
    for sources in [
        with_args(&["--bootstrap-file", p]),
        with_args(&["--user-id", "alice", &format!("--bootstrap-file={p}")]),
    ] {
        let (got, transport) = sources.read(NoStdin).unwrap();
        assert_eq!(got, envelope());
        assert_eq!(transport, Transport::File(path.clone()));
    }
}

#[test]
fn file_round_trip_via_env() {
    let (_dir, path) = temp_file(&envelope().to_json().unwrap());
    let sources = Sources {
        file_env: Some(path.to_str().unwrap().into()),
        ..Sources::default()
    };
    let (got, transport) = sources.read(NoStdin).unwrap();
    assert_eq!(got, envelope());
    assert_eq!(transport, Transport::File(path));
}

#[test]
fn flag_wins_over_env() {
    let (_dir, flagged) = temp_file(&envelope().to_json().unwrap());
    let sources = Sources {
        args: args(&["--bootstrap-file", flagged.to_str().unwrap()]),
        file_env: Some("/nonexistent/bootstrap".into()),
        cmdline_path: None,
    };
    assert_eq!(sources.read(NoStdin).unwrap().1, Transport::File(flagged));
}

#[test]
fn kernel_cmdline_round_trip_via_file() {
    let token = cmdline_token(&envelope()).unwrap();
    let cmdline =
        format!("console=ttyS0 reboot=k panic=1 {token} virtio_mmio.device=4K@0xd0000000:5\n");
    let (_dir, path) = temp_file(cmdline.as_bytes());
    let sources = Sources {
        cmdline_path: Some(path),
        ..Sources::default()
    };
    let (got, transport) = sources.read(NoStdin).unwrap();
    assert_eq!(got, envelope());
    assert_eq!(transport, Transport::KernelCmdline);
}

#[test]
fn parse_cmdline_finds_the_key_among_others() {
    let token = cmdline_token(&envelope()).unwrap();
    assert!(token.starts_with(&format!("{CMDLINE_KEY}=")));
    let line = format!("root=/dev/vda ro {token}\tquiet oxydra.other=1");
    assert_eq!(parse_cmdline(&line).unwrap(), Some(envelope()));
    // Padding is optional on input.
    let unpadded = token.trim_end_matches('=');
    assert_eq!(parse_cmdline(unpadded).unwrap(), Some(envelope()));
    // Absent key: no envelope, no error.
    assert_eq!(
        parse_cmdline("console=ttyS0 oxydra.bootstrap=x").unwrap(),
        None
    );
    // Repeated key: the last one wins.
    let other = BootstrapEnvelope {
        user_id: "bob".into(),
        ..envelope()
    };
    let line = format!("{token} {}", cmdline_token(&other).unwrap());
    assert_eq!(parse_cmdline(&line).unwrap(), Some(other));
}

// ---- stdin failures ----------------------------------------------------

#[test]
fn short_frame_under_four_bytes() {
    for input in [&b""[..], &b"\x00\x00\x01"[..]] {
        let err = with_args(&["--bootstrap-stdin"])
            .read(Cursor::new(input.to_vec()))
            .unwrap_err();
        assert!(
            matches!(err, ReadError::ShortFrame(FrameError::TooShort { actual }) if actual == input.len()),
            "{err:?}"
        );
    }
}

#[test]
fn prefix_longer_than_payload() {
    let mut input = 100u32.to_be_bytes().to_vec();
    input.extend_from_slice(b"{\"user_id\":");
    let err = read_frame(Cursor::new(input)).unwrap_err();
    assert!(
        matches!(
            err,
            ReadError::ShortFrame(FrameError::LengthMismatch {
                prefixed: 100,
                actual: 11
            })
        ),
        "{err:?}"
    );
}

#[test]
fn oversize_prefix_is_refused_before_reading_the_payload() {
    let len = MAX_ENVELOPE_FRAME as u32 + 1;
    // Only the prefix follows: the reader must refuse without waiting for
    // (or allocating) the payload.
    let err = read_frame(Cursor::new(len.to_be_bytes().to_vec())).unwrap_err();
    assert!(
        matches!(
            err,
            ReadError::Envelope(EnvelopeError::Frame(FrameError::TooLarge { len: l, max }))
                if l == len as usize && max == MAX_ENVELOPE_FRAME
        ),
        "{err:?}"
    );
    let err = read_frame(Cursor::new(u32::MAX.to_be_bytes().to_vec())).unwrap_err();
    assert!(
        matches!(
            err,
            ReadError::Envelope(EnvelopeError::Frame(FrameError::TooLarge { .. }))
        ),
        "{err:?}"
    );
}

#[test]
fn bad_json_on_stdin() {
    let err = read_frame(Cursor::new(frame_of(b"{not json"))).unwrap_err();
    assert!(
        matches!(err, ReadError::Envelope(EnvelopeError::Json(_))),
        "{err:?}"
    );
}

#[test]
fn stdin_read_error_is_reported() {
    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
        }
    }
    let err = with_args(&["--bootstrap-stdin"]).read(Broken).unwrap_err();
    assert!(matches!(err, ReadError::Stdin(_)), "{err:?}");
}

#[test]
fn empty_required_field_on_each_transport() {
    let bad = BootstrapEnvelope {
        user_id: " ".into(),
        ..envelope()
    };
    let json = serde_json::to_vec(&bad).unwrap();
    let is_empty_user = |e: &ReadError| {
        matches!(
            e,
            ReadError::Envelope(EnvelopeError::EmptyField { field: "user_id" })
        )
    };
    let err = read_frame(Cursor::new(frame_of(&json))).unwrap_err();
    assert!(is_empty_user(&err), "{err:?}");

    let (_dir, path) = temp_file(&json);
    let err = read_file(&path).unwrap_err();
    assert!(is_empty_user(&err), "{err:?}");

    let line = format!("{CMDLINE_KEY}={}", CMDLINE_BASE64.encode(&json));
    let err = parse_cmdline(&line).unwrap_err();
    assert!(is_empty_user(&err), "{err:?}");

    // Nested fields too.
    let mut bad = envelope();
    bad.runtime_policy.as_mut().unwrap().mounts.vault = String::new();
    let err = read_frame(Cursor::new(frame_of(&serde_json::to_vec(&bad).unwrap()))).unwrap_err();
    assert!(
        matches!(
            err,
            ReadError::Envelope(EnvelopeError::EmptyField {
                field: "runtime_policy.mounts.vault"
            })
        ),
        "{err:?}"
    );
    let mut bad = envelope();
    bad.runtime_policy
        .as_mut()
        .unwrap()
        .resources
        .max_memory_mib = Some(0);
    let err = read_frame(Cursor::new(frame_of(&serde_json::to_vec(&bad).unwrap()))).unwrap_err();
    assert!(
        matches!(
            err,
            ReadError::Envelope(EnvelopeError::ZeroLimit {
                field: "max_memory_mib"
            })
        ),
        "{err:?}"
    );
}

// ---- file failures -----------------------------------------------------

#[test]
fn missing_file_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent");
    let sources = Sources {
        file_env: Some(path.to_str().unwrap().into()),
        ..Sources::default()
    };
    match sources.read(NoStdin) {
        Err(ReadError::File { path: p, source }) => {
            assert_eq!(p, path);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_json_in_file() {
    let (_dir, path) = temp_file(b"user_id = alice");
    let err = with_args(&["--bootstrap-file", path.to_str().unwrap()])
        .read(NoStdin)
        .unwrap_err();
    assert!(
        matches!(err, ReadError::Envelope(EnvelopeError::Json(_))),
        "{err:?}"
    );
}

#[test]
fn oversize_file_is_refused() {
    let (_dir, path) = temp_file(b"");
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    // Sparse: no need to write a megabyte.
    f.set_len(MAX_ENVELOPE_FRAME as u64 + 1).unwrap();
    match read_file(&path) {
        Err(ReadError::FileTooLarge { path: p, len, max }) => {
            assert_eq!(p, path);
            assert_eq!(len, MAX_ENVELOPE_FRAME as u64 + 1);
            assert_eq!(max, MAX_ENVELOPE_FRAME);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn endless_special_file_is_refused() {
    // /dev/zero reports size 0 but never ends: the read itself is capped.
    let path = Path::new("/dev/zero");
    match read_file(path) {
        Err(ReadError::FileTooLarge { path: p, len, max }) => {
            assert_eq!(p, path);
            assert!(len > max as u64);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bootstrap_file_flag_without_a_path() {
    for a in [
        &["--bootstrap-file"][..],
        &["--bootstrap-file", "--user-id", "alice"][..],
        &["--bootstrap-file="][..],
    ] {
        let err = with_args(a).read(NoStdin).unwrap_err();
        assert!(matches!(err, ReadError::MissingFileArg), "{a:?}: {err:?}");
    }
}

// ---- kernel command-line failures --------------------------------------

#[test]
fn bad_base64_on_cmdline() {
    for line in [
        format!("{CMDLINE_KEY}=not*base64!"),
        format!("quiet {CMDLINE_KEY}=abcde"),
    ] {
        let err = parse_cmdline(&line).unwrap_err();
        assert!(matches!(err, ReadError::Base64(_)), "{line}: {err:?}");
    }
    let (_dir, path) = temp_file(format!("{CMDLINE_KEY}=@@@@\n").as_bytes());
    let sources = Sources {
        cmdline_path: Some(path),
        ..Sources::default()
    };
    assert!(matches!(sources.read(NoStdin), Err(ReadError::Base64(_))));
}

#[test]
fn bad_json_on_cmdline() {
    let line = format!("{CMDLINE_KEY}={}", CMDLINE_BASE64.encode(b"[1,2,3]"));
    let err = parse_cmdline(&line).unwrap_err();
    assert!(
        matches!(err, ReadError::Envelope(EnvelopeError::Json(_))),
        "{err:?}"
    );
}

#[test]
fn oversize_cmdline_value_is_refused() {
    // One byte over the cap once decoded (padded, as the runner encodes);
    // refused before decoding, with the exact decoded size.
    let value = CMDLINE_BASE64.encode(vec![b' '; MAX_ENVELOPE_FRAME + 1]);
    let err = parse_cmdline(&format!("{CMDLINE_KEY}={value}")).unwrap_err();
    assert!(
        matches!(err, ReadError::CmdlineTooLarge { len, max }
            if len == MAX_ENVELOPE_FRAME + 1 && max == MAX_ENVELOPE_FRAME),
        "{err:?}"
    );
    // Exactly at the cap is not "too large" (it then fails as JSON).
    let value = CMDLINE_BASE64.encode(vec![b' '; MAX_ENVELOPE_FRAME]);
    let err = parse_cmdline(&format!("{CMDLINE_KEY}={value}")).unwrap_err();
    assert!(
        matches!(err, ReadError::Envelope(EnvelopeError::Json(_))),
        "{err:?}"
    );
}

// ---- no transport ------------------------------------------------------

#[test]
fn no_transport_at_all() {
    let err = Sources::default().read(NoStdin).unwrap_err();
    assert!(matches!(err, ReadError::NoTransport), "{err:?}");
    // Unrelated flags do not count.
    let err = with_args(&["--user-id", "alice", "--workspace-root", "/ws"])
        .read(NoStdin)
        .unwrap_err();
    assert!(matches!(err, ReadError::NoTransport), "{err:?}");
}

#[test]
fn cmdline_without_the_key_is_no_transport() {
    let (_dir, path) = temp_file(b"console=ttyS0 reboot=k panic=1\n");
    let sources = Sources {
        cmdline_path: Some(path),
        ..Sources::default()
    };
    assert!(matches!(sources.read(NoStdin), Err(ReadError::NoTransport)));
    // A missing command-line file is not an error either.
    let sources = Sources {
        cmdline_path: Some(Path::new("/nonexistent/cmdline").into()),
        ..Sources::default()
    };
    assert!(matches!(sources.read(NoStdin), Err(ReadError::NoTransport)));
}

#[test]
fn unreadable_cmdline_is_reported() {
    // A directory: opening works, reading fails with EISDIR.
    let dir = tempfile::tempdir().unwrap();
    let sources = Sources {
        cmdline_path: Some(dir.path().to_path_buf()),
        ..Sources::default()
    };
    assert!(matches!(sources.read(NoStdin), Err(ReadError::Cmdline(_))));
}
