//! Per-launch Firecracker config generation and the kernel command-line
//! budget. Pure functions over `serde_json::Value`: nothing here touches the
//! disk or runs anything.
//!
//! A template is any Firecracker `--config-file` JSON with a `boot-source`
//! object. Generation keeps every field of the template and changes only:
//! - `boot-source.boot_args`: the bootstrap token is appended. When the
//!   template has no `boot_args` (or `null`), generation starts from
//!   [`FIRECRACKER_DEFAULT_BOOT_ARGS`], the command line Firecracker itself
//!   would have used, so the guest sees what the template author tested plus
//!   the token. An explicit `""` stays empty.
//! - `machine-config.vcpu_count` / `mem_size_mib`: capped by `[resources]`
//!   `max_vcpus` / `max_memory_mib` when given (the template's size, or
//!   Firecracker's defaults of 1 vCPU and 128 MiB when it has none, is the
//!   VM's size otherwise).
//! - `vsock`: always replaced by the runner's device (its socket lives in
//!   `run/` so the runner can remove it; see the module docs of the backend).
//!
//! The budget counts the whole command line as Firecracker 1.12 assembles it
//! (measured, see `tests/fixtures/test-kernel/README.md`): trimmed
//! `boot_args`, then ` root=... rw|ro` for a root drive, then one
//! ` virtio_mmio.device=4K@0x<addr>:<irq>` per virtio device, at most
//! [`CMDLINE_LIMIT`] bytes (2048 with the NUL).

use super::error::FirecrackerLaunchError;
use runner_types::ResourceLimits;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// Longest kernel command line Firecracker accepts, in bytes, without the
/// terminating NUL.
pub const CMDLINE_LIMIT: usize = 2047;

/// The command line Firecracker uses when a config has no `boot_args`.
pub const FIRECRACKER_DEFAULT_BOOT_ARGS: &str =
    "reboot=k panic=1 pci=off nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd";

/// Firecracker's `machine-config` defaults, used when `[resources]` sets only
/// one of the two required fields and the template has no `machine-config`.
const DEFAULT_VCPUS: u64 = 1;
const DEFAULT_MEM_MIB: u64 = 128;

/// Where the first virtio-mmio device sits, the stride, and its IRQ (x86_64).
const MMIO_BASE: u64 = 0xd000_0000;
const MMIO_STRIDE: u64 = 0x1000;
const FIRST_IRQ: u64 = 5;

/// Config keys that each add one virtio device when present (not `null`).
const SINGLE_DEVICES: [&str; 4] = ["vsock", "balloon", "entropy", "memory-hotplug"];
/// Config keys holding arrays whose every element is one virtio device.
const DEVICE_LISTS: [&str; 3] = ["drives", "network-interfaces", "pmem"];

/// The vsock device the runner gives every VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockDevice {
    /// The guest's context id.
    pub guest_cid: u32,
    /// Host-side Unix socket Firecracker listens on.
    pub uds_path: PathBuf,
}

/// A parsed template: a JSON object with a `boot-source` object and, if
/// present, a string `boot_args`.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    path: PathBuf,
    root: Map<String, Value>,
}

/// A generated per-launch config and the command line it will produce.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedConfig {
    /// The config document.
    pub config: Value,
    /// The whole kernel command line as the guest will see it.
    pub cmdline: String,
}

impl GeneratedConfig {
    /// The config as pretty-printed JSON, ready for `--config-file`.
    pub fn to_json(&self) -> String {
        format!("{:#}", self.config)
    }
}

impl Template {
    /// Parses template bytes read from `path` (the path is only for errors).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, FirecrackerLaunchError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|source| {
            FirecrackerLaunchError::TemplateJson {
                path: path.to_path_buf(),
                source,
            }
        })?;
        let shape = |key, expected| FirecrackerLaunchError::TemplateShape {
            path: path.to_path_buf(),
            key,
            expected,
        };
        let Value::Object(root) = value else {
            return Err(shape("(document)", "an object"));
        };
        match root.get("boot-source") {
            None | Some(Value::Null) => {
                return Err(FirecrackerLaunchError::NoBootSource {
                    path: path.to_path_buf(),
                });
            }
            Some(Value::Object(boot)) => match boot.get("boot_args") {
                None | Some(Value::Null) | Some(Value::String(_)) => {}
                Some(_) => return Err(shape("boot-source.boot_args", "a string")),
            },
            Some(_) => return Err(shape("boot-source", "an object")),
        }
        // Firecracker's config file requires `drives`, even when empty.
        if !root.get("drives").is_some_and(Value::is_array) {
            return Err(shape(
                "drives",
                "an array (Firecracker requires it, even empty)",
            ));
        }
        if let Some(mc) = root.get("machine-config")
            && !mc.is_object()
            && !mc.is_null()
        {
            return Err(shape("machine-config", "an object"));
        }
        Ok(Self {
            path: path.to_path_buf(),
            root,
        })
    }

    /// The file this template came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The per-launch config: `token` appended to `boot_args`, `resources`
    /// applied, `vsock` set; refused when the command line would be over
    /// [`CMDLINE_LIMIT`].
    pub fn render(
        &self,
        token: &str,
        resources: &ResourceLimits,
        vsock: &VsockDevice,
    ) -> Result<GeneratedConfig, FirecrackerLaunchError> {
        let mut root = self.root.clone();
        let boot = root
            .get_mut("boot-source")
            .and_then(Value::as_object_mut)
            .expect("Template::parse checked that boot-source is an object");
        let base = match boot.get("boot_args") {
            Some(Value::String(s)) => s.as_str(),
            _ => FIRECRACKER_DEFAULT_BOOT_ARGS,
        };
        let boot_args = join(base.trim(), token);
        boot.insert("boot_args".into(), Value::String(boot_args));

        apply_resources(&mut root, resources);
        root.insert(
            "vsock".into(),
            serde_json::json!({
                "guest_cid": vsock.guest_cid,
                // Workspace paths come from TOML strings and validated user
                // ids, so they are UTF-8; lossy only guards the impossible.
                "uds_path": vsock.uds_path.to_string_lossy(),
            }),
        );

        let config = Value::Object(root);
        let cmdline = kernel_cmdline(&config);
        check_budget(&cmdline, token)?;
        Ok(GeneratedConfig { config, cmdline })
    }
}

/// Fails with [`FirecrackerLaunchError::CmdlineTooLong`] when `cmdline` is
/// over [`CMDLINE_LIMIT`]; `token` is the envelope's share, for the message.
pub fn check_budget(cmdline: &str, token: &str) -> Result<(), FirecrackerLaunchError> {
    if cmdline.len() > CMDLINE_LIMIT {
        return Err(FirecrackerLaunchError::CmdlineTooLong {
            needed: cmdline.len(),
            limit: CMDLINE_LIMIT,
            envelope_bytes: token.len(),
        });
    }
    Ok(())
}

/// The kernel command line Firecracker 1.12 builds from `config`: trimmed
/// `boot_args` (Firecracker's default when absent), the root-device
/// parameters, then one virtio-mmio entry per device.
pub fn kernel_cmdline(config: &Value) -> String {
    let boot_args = config
        .get("boot-source")
        .and_then(|b| b.get("boot_args"))
        .and_then(Value::as_str)
        .unwrap_or(FIRECRACKER_DEFAULT_BOOT_ARGS);
    let mut line = boot_args.trim().to_owned();
    if let Some(root) = root_drive(config) {
        let target = match root.get("partuuid").and_then(Value::as_str) {
            Some(id) => format!("root=PARTUUID={id}"),
            None => "root=/dev/vda".to_owned(),
        };
        let read_only = root
            .get("is_read_only")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        line = join(&line, &target);
        line = join(&line, if read_only { "ro" } else { "rw" });
    }
    for i in 0..virtio_device_count(config) as u64 {
        let entry = format!(
            "virtio_mmio.device=4K@0x{:x}:{}",
            MMIO_BASE + i * MMIO_STRIDE,
            FIRST_IRQ + i
        );
        line = join(&line, &entry);
    }
    line
}

/// How many virtio devices `config` declares (each gets a command-line entry).
pub fn virtio_device_count(config: &Value) -> usize {
    let lists: usize = DEVICE_LISTS
        .iter()
        .filter_map(|k| config.get(*k).and_then(Value::as_array))
        .map(Vec::len)
        .sum();
    let singles = SINGLE_DEVICES
        .iter()
        .filter(|k| config.get(**k).is_some_and(|v| !v.is_null()))
        .count();
    lists + singles
}

fn root_drive(config: &Value) -> Option<&Value> {
    config
        .get("drives")?
        .as_array()?
        .iter()
        .find(|d| d.get("is_root_device").and_then(Value::as_bool) == Some(true))
}

fn apply_resources(root: &mut Map<String, Value>, resources: &ResourceLimits) {
    if resources.max_vcpus.is_none() && resources.max_memory_mib.is_none() {
        return;
    }
    let slot = root.entry("machine-config").or_insert(Value::Null);
    if !slot.is_object() {
        // Absent or null (Template::parse refused anything else): Firecracker
        // requires both fields, so start from its defaults.
        *slot = serde_json::json!({
            "vcpu_count": DEFAULT_VCPUS,
            "mem_size_mib": DEFAULT_MEM_MIB,
        });
    }
    let mc = slot.as_object_mut().expect("machine-config is an object");
    for (key, cap, default) in [
        (
            "vcpu_count",
            resources.max_vcpus.map(u64::from),
            DEFAULT_VCPUS,
        ),
        ("mem_size_mib", resources.max_memory_mib, DEFAULT_MEM_MIB),
    ] {
        let Some(cap) = cap else { continue };
        // A non-numeric value is Firecracker's to reject; the cap replaces it.
        let current = mc.get(key).map_or(Some(default), Value::as_u64);
        let capped = current.map_or(cap, |c| c.min(cap));
        mc.insert(key.into(), capped.into());
    }
}

/// `a` and `b` joined by one space, without a leading space when `a` is empty.
fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_owned()
    } else {
        format!("{a} {b}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_types::reader::{cmdline_token, parse_cmdline};
    use runner_types::{BootstrapEnvelope, SandboxTier};
    use serde_json::json;

    fn path() -> &'static Path {
        Path::new("/etc/fc/runtime.json")
    }

    fn vsock() -> VsockDevice {
        VsockDevice {
            guest_cid: 3,
            uds_path: PathBuf::from("/ws/alice/run/oxydra-vm-vsock.sock"),
        }
    }

    /// Parses `v`, adding the `drives` Firecracker requires when absent.
    fn template(mut v: Value) -> Template {
        if v.get("drives").is_none() {
            v["drives"] = json!([]);
        }
        Template::parse(path(), v.to_string().as_bytes()).unwrap()
    }

    fn envelope() -> BootstrapEnvelope {
        BootstrapEnvelope {
            user_id: "alice".into(),
            sandbox_tier: SandboxTier::MicroVm,
            workspace_root: "/ws".into(),
            sidecar_endpoint: None,
            runtime_policy: None,
            startup_status: None,
        }
    }

    fn boot_args(c: &GeneratedConfig) -> &str {
        c.config["boot-source"]["boot_args"].as_str().unwrap()
    }

    const VSOCK_ENTRY: &str = " virtio_mmio.device=4K@0xd0000000:5";

    #[test]
    fn token_is_appended_to_existing_boot_args_and_decodes_back() {
        let t = template(json!({"boot-source": {
            "kernel_image_path": "/k", "boot_args": "  console=ttyS0 quiet  "}}));
        let env = envelope();
        let token = cmdline_token(&env).unwrap();
        let c = t
            .render(&token, &ResourceLimits::default(), &vsock())
            .unwrap();
        assert_eq!(boot_args(&c), format!("console=ttyS0 quiet {token}"));
        assert_eq!(
            c.cmdline,
            format!("console=ttyS0 quiet {token}{VSOCK_ENTRY}")
        );
        assert_eq!(parse_cmdline(&c.cmdline).unwrap(), Some(env));
    }

    #[test]
    fn absent_boot_args_start_from_firecrackers_default() {
        let t = template(json!({"boot-source": {"kernel_image_path": "/k"}}));
        let c = t
            .render("k=v", &ResourceLimits::default(), &vsock())
            .unwrap();
        assert_eq!(
            boot_args(&c),
            format!("{FIRECRACKER_DEFAULT_BOOT_ARGS} k=v")
        );
        let null = template(json!({"boot-source": {"kernel_image_path": "/k", "boot_args": null}}));
        let c2 = null
            .render("k=v", &ResourceLimits::default(), &vsock())
            .unwrap();
        assert_eq!(c2.cmdline, c.cmdline);
    }

    #[test]
    fn empty_boot_args_stay_empty_apart_from_the_token() {
        let t = template(json!({"boot-source": {"kernel_image_path": "/k", "boot_args": ""}}));
        let c = t
            .render("k=v", &ResourceLimits::default(), &vsock())
            .unwrap();
        assert_eq!(boot_args(&c), "k=v");
        assert_eq!(c.cmdline, format!("k=v{VSOCK_ENTRY}"));
    }

    #[test]
    fn unknown_and_other_fields_are_preserved() {
        let original = json!({
            "boot-source": {"kernel_image_path": "/k", "initrd_path": "/i", "boot_args": "a"},
            "drives": [{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true,
                        "is_read_only": false, "x-unknown": [1, 2]}],
            "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "smt": false},
            "x-future-section": {"nested": {"deep": true}},
            "logger": {"level": "Info"}
        });
        let c = template(original.clone())
            .render("k=v", &ResourceLimits::default(), &vsock())
            .unwrap();
        let mut expected = original;
        expected["boot-source"]["boot_args"] = json!("a k=v");
        expected["vsock"] =
            json!({"guest_cid": 3, "uds_path": "/ws/alice/run/oxydra-vm-vsock.sock"});
        assert_eq!(c.config, expected);
        // Round-trips through the text we write.
        assert_eq!(
            serde_json::from_str::<Value>(&c.to_json()).unwrap(),
            expected
        );
    }

    #[test]
    fn template_vsock_is_replaced_by_the_runners() {
        let t = template(json!({"boot-source": {"kernel_image_path": "/k"},
            "vsock": {"guest_cid": 9, "uds_path": "/elsewhere.sock", "vsock_id": "v"}}));
        let c = t
            .render("k=v", &ResourceLimits::default(), &vsock())
            .unwrap();
        assert_eq!(
            c.config["vsock"],
            json!({"guest_cid": 3, "uds_path": "/ws/alice/run/oxydra-vm-vsock.sock"})
        );
        assert_eq!(virtio_device_count(&c.config), 1);
    }

    #[test]
    fn resources_are_applied_to_machine_config() {
        let limits = ResourceLimits {
            max_vcpus: Some(2),
            max_memory_mib: Some(512),
            max_processes: Some(10),
        };
        // A template within the limits keeps its size...
        let t = template(json!({"boot-source": {"kernel_image_path": "/k"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 64, "smt": false}}));
        let c = t.render("k=v", &limits, &vsock()).unwrap();
        assert_eq!(
            c.config["machine-config"],
            json!({"vcpu_count": 1, "mem_size_mib": 64, "smt": false})
        );
        // ...a bigger one is capped.
        let big = template(json!({"boot-source": {"kernel_image_path": "/k"},
            "machine-config": {"vcpu_count": 8, "mem_size_mib": 4096}}));
        let c = big.render("k=v", &limits, &vsock()).unwrap();
        assert_eq!(
            c.config["machine-config"],
            json!({"vcpu_count": 2, "mem_size_mib": 512})
        );

        // Only one limit and no machine-config: Firecracker's defaults,
        // capped, because both fields are required.
        let mem_only = ResourceLimits {
            max_memory_mib: Some(96),
            ..ResourceLimits::default()
        };
        let bare = template(json!({"boot-source": {"kernel_image_path": "/k"}}));
        let c = bare.render("k=v", &mem_only, &vsock()).unwrap();
        assert_eq!(
            c.config["machine-config"],
            json!({"vcpu_count": 1, "mem_size_mib": 96})
        );

        // No limits: machine-config untouched (here: still absent).
        let c = bare
            .render("k=v", &ResourceLimits::default(), &vsock())
            .unwrap();
        assert!(c.config.get("machine-config").is_none());
    }

    #[test]
    fn invalid_templates_name_the_file() {
        let err = Template::parse(path(), b"{ not json").unwrap_err();
        assert!(
            matches!(&err, FirecrackerLaunchError::TemplateJson { path: p, .. } if p == path()),
            "{err:?}"
        );
        let err = Template::parse(path(), br#"{"drives": []}"#).unwrap_err();
        assert!(
            matches!(&err, FirecrackerLaunchError::NoBootSource { path: p } if p == path()),
            "{err:?}"
        );
        assert!(err.to_string().contains("/etc/fc/runtime.json"));
        for (doc, key) in [
            (r#"[1]"#, "(document)"),
            (r#"{"boot-source": "k"}"#, "boot-source"),
            (
                r#"{"boot-source": {"boot_args": 7}}"#,
                "boot-source.boot_args",
            ),
            (
                r#"{"boot-source": {}, "drives": [], "machine-config": 1}"#,
                "machine-config",
            ),
            (r#"{"boot-source": {}}"#, "drives"),
            (r#"{"boot-source": {}, "drives": {}}"#, "drives"),
        ] {
            let err = Template::parse(path(), doc.as_bytes()).unwrap_err();
            assert!(
                matches!(&err, FirecrackerLaunchError::TemplateShape { key: k, .. } if *k == key),
                "{doc}: {err:?}"
            );
        }
        let err = Template::parse(path(), br#"{"boot-source": null, "drives": []}"#).unwrap_err();
        assert!(matches!(err, FirecrackerLaunchError::NoBootSource { .. }));
    }

    #[test]
    fn cmdline_counts_root_device_and_every_virtio_device() {
        let config = json!({
            "boot-source": {"boot_args": " a  b "},
            "drives": [
                {"drive_id": "data", "is_root_device": false},
                {"drive_id": "root", "is_root_device": true, "is_read_only": true},
            ],
            "network-interfaces": [{"iface_id": "eth0"}],
            "vsock": {"guest_cid": 3},
            "balloon": {"amount_mib": 0},
            "entropy": {},
            "mmds-config": {"network_interfaces": ["eth0"]},
        });
        assert_eq!(virtio_device_count(&config), 6);
        let line = kernel_cmdline(&config);
        assert_eq!(
            line,
            "a  b root=/dev/vda ro \
             virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 \
             virtio_mmio.device=4K@0xd0002000:7 virtio_mmio.device=4K@0xd0003000:8 \
             virtio_mmio.device=4K@0xd0004000:9 virtio_mmio.device=4K@0xd0005000:10"
        );
        // 35 bytes per device while the IRQ has one digit, 36 from IRQ 10.
        assert_eq!(
            line.len(),
            "a  b".len() + " root=/dev/vda ro".len() + 5 * 35 + 36
        );

        let partuuid = json!({"boot-source": {"boot_args": "x"},
            "drives": [{"is_root_device": true, "partuuid": "ab-01"}]});
        assert_eq!(
            kernel_cmdline(&partuuid),
            format!("x root=PARTUUID=ab-01 rw{VSOCK_ENTRY}")
        );
        let none = json!({"boot-source": {"boot_args": "x"}, "vsock": null, "drives": []});
        assert_eq!(kernel_cmdline(&none), "x");
    }

    #[test]
    fn budget_is_exact_at_the_limit_and_refuses_one_byte_more() {
        // Measured: 2012 bytes of boot_args + vsock boot with cmdline_len=2047.
        let fits = "x".repeat(2010);
        let t = template(json!({"boot-source": {"kernel_image_path": "/k", "boot_args": ""}}));
        let ok = t
            .render(&format!("a={fits}"), &ResourceLimits::default(), &vsock())
            .unwrap();
        assert_eq!(ok.cmdline.len(), CMDLINE_LIMIT);

        let over = format!("ab={fits}");
        let err = t
            .render(&over, &ResourceLimits::default(), &vsock())
            .unwrap_err();
        assert!(
            matches!(
                err,
                FirecrackerLaunchError::CmdlineTooLong {
                    needed: 2048,
                    limit: 2047,
                    envelope_bytes: 2013
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn budget_counts_template_devices_not_just_the_token() {
        let drives: Vec<Value> = (0..8)
            .map(|i| json!({"drive_id": format!("d{i}")}))
            .collect();
        let base = "y".repeat(1700);
        let t = template(json!({"boot-source": {"boot_args": base}, "drives": drives}));
        let token = format!("k={}", "z".repeat(40));
        // 1700 + 43 fits alone, but 9 devices add 5*35 + 4*36 = 319 bytes.
        let err = t
            .render(&token, &ResourceLimits::default(), &vsock())
            .unwrap_err();
        assert!(
            matches!(
                err,
                FirecrackerLaunchError::CmdlineTooLong { needed, envelope_bytes: 42, .. }
                    if needed == 1700 + 1 + 42 + 5 * 35 + 4 * 36
            ),
            "{err:?}"
        );
    }
}
