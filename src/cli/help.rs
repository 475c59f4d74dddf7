//! `kms --help` in groups (clap has one subcommand heading): the client commands,
//! which talk to a running server, apart from the server and operator commands,
//! which open the database. And `kms completions SHELL`.

use clap::{Args, CommandFactory, FromArgMatches};
use clap_complete::Shell;

use super::{error::CliError, output::print};
use crate::config::Cli;

/// Talk to a server over gRPC, with the login of `kms login`.
const CLIENT: &[&str] = &["login", "logout", "keys", "users", "audit", "keyring"];
/// Run where the server runs; all but `healthcheck` open the database.
const OPERATOR: &[&str] = &[
    "serve",
    "migrate",
    "backup",
    "user",
    "signing-key",
    "master-key",
    "healthcheck",
];
/// Neither.
const OTHER: &[&str] = &["completions"];

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    pub shell: Shell,
}

/// The command line with the grouped help.
pub fn command() -> clap::Command {
    let cli = Cli::command();
    let groups = [
        (
            "Client commands: talk to a running server over gRPC (--server or KMS_SERVER, default http://127.0.0.1:50051), after `kms login`",
            CLIENT,
        ),
        (
            "Server and operator commands: run where the server runs and open its database directly (healthcheck asks the server's HTTP /health)",
            OPERATOR,
        ),
        ("Other", OTHER),
    ];
    let width = cli
        .get_subcommands()
        .map(|c| c.get_name().len())
        .max()
        .unwrap_or(0);
    let mut text = String::new();
    for (heading, names) in groups {
        text.push_str(heading);
        text.push_str(":\n");
        for name in names {
            let about = cli
                .find_subcommand(name)
                .and_then(|c| c.get_about())
                .map(|a| a.to_string())
                .unwrap_or_default();
            text.push_str(&format!("  {name:<width$}  {about}\n"));
        }
        if names == OTHER {
            let help = "Print this message or the help of the given subcommand(s)";
            text.push_str(&format!("  {:<width$}  {help}\n", "help"));
        }
        text.push('\n');
    }
    let template = format!(
        "{{before-help}}{{about-with-newline}}\n{{usage-heading}} {{usage}}\n\n{text}Options:\n{{options}}\n\n{}\n{{after-help}}",
        super::error::EXIT_STATUS_HELP
    );
    cli.help_template(template)
}

/// Parses the process's arguments; a usage error exits 2 with clap's message.
pub fn parse() -> Cli {
    let matches = command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

pub fn completions(args: &CompletionsArgs) -> Result<(), CliError> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command(), "kms", &mut script);
    print(&String::from_utf8_lossy(&script))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subcommand_is_in_exactly_one_group() {
        let cli = Cli::command();
        let names: Vec<&str> = cli.get_subcommands().map(|c| c.get_name()).collect();
        for name in &names {
            let homes = [CLIENT, OPERATOR, OTHER]
                .iter()
                .filter(|g| g.contains(name))
                .count();
            assert_eq!(homes, 1, "{name} must be in one help group");
        }
        for name in CLIENT.iter().chain(OPERATOR).chain(OTHER) {
            assert!(names.contains(name), "{name} is not a subcommand");
        }
        command().debug_assert();
    }
}
