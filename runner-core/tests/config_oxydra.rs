//! Config files written in oxydra's format load: `config_version`,
//! `[behavior] timezone`, `[channels.*]` with senders, and `[web]`; a
//! different major version is refused naming `config_version`.

use runner_core::UserId;
use runner_core::config::{
    ChannelSecret, ConfigError, ConfigNotice, load_runner_config, parse_user_config,
};
use runner_types::SandboxTier;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/oxydra")
}

#[test]
fn oxydra_files_load_with_every_key() {
    let runner_toml = fixtures().join("runner.toml");
    let cfg = load_runner_config(&runner_toml).unwrap();
    assert_eq!(cfg.default_tier, SandboxTier::Process);
    assert_eq!(
        cfg.notices,
        [ConfigNotice::WebIgnored {
            path: std::path::absolute(&runner_toml).unwrap()
        }]
    );
    assert!(cfg.notices[0].to_string().contains("no web UI"));
    assert!(cfg.control.ipc_socket_link);
    let alice = &cfg.users[&UserId::new("alice").unwrap()];
    assert_eq!(alice.timezone, "Asia/Tokyo");
    assert_eq!(alice.sandbox_tier, Some(SandboxTier::Process));
    assert_eq!(
        alice.channel_secrets,
        [ChannelSecret {
            channel: "telegram".into(),
            env: "OXYDRA_TEST_TELEGRAM_TOKEN".into(),
        }]
    );
    assert_eq!(alice.resources.max_processes, Some(256));
    assert_eq!(alice.credential_refs["openai"], "vault:openai");
}

#[test]
fn senders_and_channel_shapes_are_checked() {
    let path = Path::new("/etc/runner/alice.toml");
    let ok = parse_user_config(
        "[channels.telegram]\nbot_token_env = \"T\"\n[[channels.telegram.senders]]\nplatform_ids = [1]\n[[channels.telegram.senders]]\nplatform_ids = [\"x\"]\ndisplay_name = \"B\"\n",
        path,
    )
    .unwrap();
    assert_eq!(ok.channel_secrets.len(), 1);
    // A channel without a token variable needs nothing from the runner.
    let none = parse_user_config("[channels.slack]\nenabled = false\n", path).unwrap();
    assert!(none.channel_secrets.is_empty());
    assert_eq!(none.timezone, "UTC");

    let err = parse_user_config("[channels.telegram]\nbot_tokn_env = \"T\"\n", path).unwrap_err();
    assert!(
        matches!(&err, ConfigError::UnknownKey { key, .. } if key == "channels.telegram.bot_tokn_env"),
        "{err:?}"
    );
    let err = parse_user_config(
        "[[channels.telegram.senders]]\nplatform_ids = [1]\nnickname = \"x\"\n",
        path,
    )
    .unwrap_err();
    assert!(matches!(err, ConfigError::UnknownKey { .. }), "{err:?}");
    let err =
        parse_user_config("[channels.telegram]\nbot_token_env = \"A-B\"\n", path).unwrap_err();
    assert!(
        matches!(&err, ConfigError::InvalidEnvName { key, name, .. }
            if key == "channels.telegram.bot_token_env" && name == "A-B"),
        "{err:?}"
    );
    let err = parse_user_config("[behavior]\ntimezone = \"../etc\"\n", path).unwrap_err();
    assert!(
        matches!(err, ConfigError::InvalidTimezone { .. }),
        "{err:?}"
    );
    let err = parse_user_config("[web]\nenabled = true\n", path).unwrap_err();
    assert!(matches!(err, ConfigError::UnknownKey { .. }), "{err:?}");
}

#[test]
fn another_major_version_is_refused_naming_config_version() {
    let dir = tempfile::tempdir().unwrap();
    let runner = dir.path().join("runner.toml");
    std::fs::write(&runner, "config_version = \"2.0.0\"\n").unwrap();
    let err = load_runner_config(&runner).unwrap_err();
    assert!(
        matches!(&err, ConfigError::UnsupportedVersion { path, value } if path == &runner && value == "2.0.0"),
        "{err:?}"
    );
    assert!(err.to_string().contains("`config_version`"), "{err}");

    // The per-user file is checked the same way.
    std::fs::write(
        &runner,
        "config_version = \"1.0.1\"\n[users.alice]\nconfig_path = \"alice.toml\"\n",
    )
    .unwrap();
    let user = dir.path().join("alice.toml");
    std::fs::write(&user, "config_version = \"garbage\"\n").unwrap();
    let err = load_runner_config(&runner).unwrap_err();
    assert!(
        matches!(&err, ConfigError::UnsupportedVersion { path, value } if path == &user && value == "garbage"),
        "{err:?}"
    );
}
