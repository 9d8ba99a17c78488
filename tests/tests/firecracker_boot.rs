//! Real Firecracker boots of the test kernel through the backend: each role
//! finds exactly its envelope on the kernel command line, the command line
//! is the one the budget check predicted (also at exactly the limit), and a
//! guest reset is an exit event with code 0.

use runner_core::backend::firecracker::{CMDLINE_LIMIT, FirecrackerLaunchError};
use runner_core::backend::{GuestIdentity, LaunchError, SandboxBackend};
use runner_tests::firecracker::*;
use runner_types::reader::parse_cmdline;
use runner_types::{ExitStatus, GuestRole, LogStream};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

#[tokio::test]
async fn each_role_boots_with_exactly_its_envelope_and_exits_zero_on_reset() {
    if !runner_tests::kvm_or_skip("each_role_boots_with_exactly_its_envelope") {
        return;
    }
    let fx = Fixture::new("exit", "exit");
    let backend = fx.backend();
    backend
        .prepare_session(&fx.user, &fx.workspace)
        .await
        .unwrap();
    for role in GuestRole::START_ORDER {
        let spec = fx.spec(role, &backend);
        let predicted = backend.generate(&spec).unwrap();
        let mut guest = backend.launch(spec.clone()).await.unwrap();
        let GuestIdentity::MicroVm { pid } = guest.identity else {
            panic!("{role}: identity {:?}", guest.identity);
        };
        assert!(pid > 0);

        let paths = runner_core::backend::firecracker::LaunchPaths::new(&fx.workspace.run, role);
        let mode = std::fs::metadata(&paths.config)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{role}: generated config mode");
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&paths.config).unwrap()).unwrap();
        assert_eq!(written, predicted.config, "{role}: config on disk");
        assert_eq!(
            written["vsock"]["uds_path"].as_str().unwrap(),
            paths.vsock_socket.to_str().unwrap()
        );

        let stderr = tokio::spawn(read_to_end(take_output(&mut guest, LogStream::Stderr)));
        let console = read_to_end(take_output(&mut guest, LogStream::Stdout)).await;
        let exit = tokio::time::timeout(PROMPT, guest.exit.wait())
            .await
            .expect("exit event");
        let stderr = stderr.await.unwrap();
        assert_eq!(
            exit.status,
            ExitStatus::Code(0),
            "{role}: console {:?}, stderr {:?}",
            String::from_utf8_lossy(&console),
            String::from_utf8_lossy(&stderr)
        );

        let cmdline = console_cmdline(&console);
        assert_eq!(
            parse_cmdline(&cmdline).unwrap(),
            Some(spec.envelope),
            "{role}"
        );
        assert_eq!(cmdline, predicted.cmdline, "{role}: budget model vs. real");
        assert_eq!(console_cmdline_len(&console), cmdline.len());
        let text = String::from_utf8_lossy(&console);
        assert!(
            text.starts_with("TESTKERNEL start\n"),
            "{role}: console is not clean: {text:?}"
        );
        assert!(text.ends_with("TESTKERNEL exit\n"), "{role}: {text:?}");

        // The exit stays observable, and stop on an exited VM returns it.
        assert_eq!(guest.control.stop(PROMPT).await.unwrap(), exit);
        guest.control.cleanup().await.unwrap();
        for gone in [&paths.config, &paths.api_socket, &paths.vsock_socket] {
            assert!(!gone.exists(), "{role}: {} left behind", gone.display());
        }
    }
}

/// Pads the runtime's template so that the command line is exactly
/// `target` bytes.
fn pad_template_to(fx: &Fixture, backend_cmdline_len: usize, target: usize) {
    let pad = target - backend_cmdline_len;
    // " p=" costs 3 bytes; the remaining bytes are the value.
    assert!(pad >= 4, "pad {pad}");
    let boot_args = format!(
        "console=ttyS0 testkernel.mode=exit p={}",
        "v".repeat(pad - 3)
    );
    std::fs::write(&fx.runtime_template, template_json(&boot_args)).unwrap();
}

#[tokio::test]
async fn a_command_line_of_exactly_the_limit_boots_and_one_more_byte_is_refused() {
    if !runner_tests::kvm_or_skip("a_command_line_of_exactly_the_limit_boots") {
        return;
    }
    let fx = Fixture::new("exit", "exit");
    let backend = fx.backend();
    let mut spec = fx.spec(GuestRole::Runtime, &backend);
    // A large but fitting envelope: most of the budget is the envelope.
    if let Some(policy) = spec.envelope.runtime_policy.as_mut() {
        policy.credential_refs = BTreeMap::from([("pad".to_owned(), "r".repeat(600))]);
    }
    let base = backend.generate(&spec).unwrap().cmdline.len();
    pad_template_to(&fx, base, CMDLINE_LIMIT);
    assert_eq!(
        backend.generate(&spec).unwrap().cmdline.len(),
        CMDLINE_LIMIT
    );

    let mut guest = backend.launch(spec.clone()).await.unwrap();
    let _stderr = tokio::spawn(read_to_end(take_output(&mut guest, LogStream::Stderr)));
    let console = read_to_end(take_output(&mut guest, LogStream::Stdout)).await;
    let exit = tokio::time::timeout(PROMPT, guest.exit.wait())
        .await
        .unwrap();
    assert_eq!(
        exit.status,
        ExitStatus::Code(0),
        "{}",
        String::from_utf8_lossy(&console)
    );
    assert_eq!(console_cmdline_len(&console), CMDLINE_LIMIT);
    assert_eq!(
        parse_cmdline(&console_cmdline(&console)).unwrap(),
        Some(spec.envelope.clone())
    );
    guest.control.cleanup().await.unwrap();

    pad_template_to(&fx, base, CMDLINE_LIMIT + 1);
    let err = backend.launch(spec).await.unwrap_err();
    assert!(
        matches!(
            err,
            LaunchError::Firecracker(FirecrackerLaunchError::CmdlineTooLong { needed, limit, .. })
                if needed == CMDLINE_LIMIT + 1 && limit == CMDLINE_LIMIT
        ),
        "{err:?}"
    );
}
