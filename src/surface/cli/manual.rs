//! The manual pages and shell completions, generated from the clap definitions (and, for the
//! main page's ENVIRONMENT section, from the configuration keys), so they cannot drift from the
//! command line. Generated copies ship in `deploy/man/` and `deploy/completions/` (the Debian
//! package installs them); a test checks that they equal what this module writes now.

use std::io::{self, Write};
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::Man;
use roff::{bold, italic, roman, Roff};

use super::Cli;
use crate::config::KEYS;

/// The command line's name.
const BIN: &str = "meter-sync";

/// Writes the completion script for `shell`.
pub fn completions(shell: Shell, out: &mut dyn Write) -> io::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), BIN, &mut script);
    if shell == Shell::Bash {
        // clap_complete's bash script spells a subcommand's state two ways when the binary's
        // name has a hyphen (clap-rs/clap#6421): the dispatch loop arrives at
        // `meter__sync__subcmd__run` while the case arms read `meter__subcmd__sync__subcmd__run`,
        // so no subcommand's flags ever complete. The arms are respelt as the loop spells them.
        let text = String::from_utf8_lossy(&script).replace("meter__subcmd__sync", "meter__sync");
        script = text.into_bytes();
    }
    out.write_all(&script)
}

/// The file name of the completion script for `shell`, where distributions look for it.
pub fn completion_file(shell: Shell) -> String {
    match shell {
        Shell::Bash => format!("{BIN}.bash"),
        Shell::Zsh => format!("_{BIN}"),
        Shell::Fish => format!("{BIN}.fish"),
        Shell::Elvish => format!("{BIN}.elv"),
        Shell::PowerShell => format!("_{BIN}.ps1"),
        _ => format!("{BIN}.{shell}"),
    }
}

/// Every manual page, as (file name, roff text): `meter-sync.1` and one per subcommand
/// (`meter-sync-run.1`, `meter-sync-quarantine-release.1`, ...), which the main page names.
pub fn manual_pages() -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = vec![("meter-sync.1".to_string(), main_page(cmd.clone())?)];
    subcommand_pages(&cmd, &mut pages)?;
    Ok(pages)
}

/// Writes [`manual_pages`] into `dir`; returns the files written.
pub fn write_manual_pages(dir: &Path) -> io::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let pages = manual_pages()?;
    for (name, text) in &pages {
        std::fs::write(dir.join(name), text)?;
    }
    Ok(pages.into_iter().map(|(name, _)| name).collect())
}

fn subcommand_pages(cmd: &clap::Command, pages: &mut Vec<(String, Vec<u8>)>) -> io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let man = Man::new(sub.clone());
        let mut text = Vec::new();
        man.render(&mut text)?;
        pages.push((man.get_filename(), text));
        subcommand_pages(sub, pages)?;
    }
    Ok(())
}

/// The main page: clap's sections, then the configuration keys, exit status, files and
/// related pages.
fn main_page(cmd: clap::Command) -> io::Result<Vec<u8>> {
    let man = Man::new(cmd).manual("meter-sync manual");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    man.render_subcommands_section(&mut out)?;
    let mut roff = Roff::new();
    roff.control("SH", ["ENVIRONMENT"]);
    roff.text([roman(
        "Each key is read from the environment, a .env file in the working directory, \
         --config FILE (the key in lower case) or --set KEY=VALUE.",
    )]);
    for key in KEYS {
        roff.control("TP", []);
        roff.text([bold(key.name)]);
        let mut what = vec![roman(key.help)];
        if !key.help.ends_with('.') {
            what.push(roman("."));
        }
        if let Some(default) = key.default {
            what.push(roman(format!(" Default: {default}.")));
        } else if key.required {
            what.push(roman(" Required."));
        }
        if key.secret {
            what.push(roman(" Secret: never printed."));
        }
        what.push(roman(format!(" Accepts {}.", key.accepts.describe())));
        roff.text(what);
    }
    roff.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in [
        ("0", "Success."),
        (
            "1",
            "A sync part failed, or a database could not be reached.",
        ),
        ("2", "Bad configuration or usage: restarting cannot fix it."),
    ] {
        roff.control("TP", []);
        roff.text([bold(code)]);
        roff.text([roman(meaning)]);
    }
    roff.control("SH", ["FILES"]);
    for (file, meaning) in [
        (
            "/etc/meter-sync/meter-sync.env",
            "The environment file of the systemd unit (the Debian package installs an example).",
        ),
        (
            "/usr/share/meter-sync/",
            "Alert rules for Prometheus, a Grafana dashboard, a PgBouncer example and the central's grants.",
        ),
    ] {
        roff.control("TP", []);
        roff.text([italic(file)]);
        roff.text([roman(meaning)]);
    }
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(
        "systemctl(1), journalctl(1), and the README in /usr/share/doc/meter-sync/.",
    )]);
    roff.to_writer(&mut out)?;
    man.render_version_section(&mut out)?;
    Ok(out)
}
