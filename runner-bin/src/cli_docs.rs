//! `runner-bin completions <shell>` and `runner-bin man`: generated from
//! the clap definition, so they always match the real options.

use crate::cli::Cli;
use anyhow::Context;
use clap::CommandFactory;
use std::io::Write;
use std::path::Path;

/// Writes the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell, out: &mut impl Write) {
    let mut cmd = Cli::command();
    let name = cmd.get_name().to_owned();
    clap_complete::generate(shell, &mut cmd, name, out);
}

/// Writes the main man page (roff): the daemon's options and the list of
/// subcommands.
pub fn man(out: &mut impl Write) -> std::io::Result<()> {
    clap_mangen::Man::new(Cli::command()).render(out)
}

/// Writes `runner-bin.1` and one `runner-bin-<subcommand>.1` per
/// subcommand into `dir`.
pub fn man_pages(dir: &Path) -> anyhow::Result<()> {
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("Cannot write man pages to {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBCOMMANDS: [&str; 7] = [
        "status",
        "stop",
        "logs",
        "events",
        "metrics",
        "completions",
        "man",
    ];

    #[test]
    fn completions_name_every_subcommand() {
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh] {
            let mut out = Vec::new();
            completions(shell, &mut out);
            let text = String::from_utf8(out).unwrap();
            for sub in SUBCOMMANDS {
                assert!(text.contains(sub), "{shell}: no {sub} in\n{text}");
            }
        }
    }

    #[test]
    fn man_page_is_roff_and_names_every_subcommand() {
        let mut out = Vec::new();
        man(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(".TH runner-bin 1"), "{text}");
        assert!(text.contains(".SH SUBCOMMANDS"), "{text}");
        for sub in SUBCOMMANDS {
            assert!(
                text.contains(&format!("runner\\-bin\\-{sub}")) || text.contains(sub),
                "no {sub}"
            );
        }
        assert!(
            text.contains("\\-\\-daemon"),
            "options are documented:\n{text}"
        );
    }

    #[test]
    fn man_pages_one_per_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        man_pages(dir.path()).unwrap();
        for page in [
            "runner-bin.1",
            "runner-bin-status.1",
            "runner-bin-metrics.1",
        ] {
            let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
            assert!(text.contains(".SH OPTIONS"), "{page}:\n{text}");
        }
        assert!(!dir.path().join("runner-bin-demo-guest.1").exists());
    }
}
