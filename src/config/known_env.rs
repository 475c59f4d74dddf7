//! Which `KMS_*` variables mean something, so that a misspelt one earns a warning at
//! start. The list is read from the command line's own `env` attributes rather than
//! kept by hand, so a new setting cannot be forgotten in it.

use std::collections::BTreeSet;

use clap::CommandFactory;

use super::Cli;

/// `KMS_*` variables read outside the command line: the log format (set up before
/// the command line is parsed), the tests' PostgreSQL URL and where the console tests
/// save their screenshots.
const READ_OUTSIDE_CLI: &[&str] = &[
    "KMS_LOG_FORMAT",
    "KMS_TEST_POSTGRES_URL",
    "KMS_UI_SCREENSHOTS_DIR",
];

/// Every `KMS_*` variable the `kms` binary reads: the `env` of every argument of every
/// subcommand, and those read outside the command line.
pub fn known_env_vars() -> BTreeSet<String> {
    fn walk(command: &clap::Command, names: &mut BTreeSet<String>) {
        names.extend(
            command
                .get_arguments()
                .filter_map(|arg| arg.get_env())
                .map(|name| name.to_string_lossy().into_owned()),
        );
        for sub in command.get_subcommands() {
            walk(sub, names);
        }
    }
    let mut names: BTreeSet<String> = READ_OUTSIDE_CLI.iter().map(|&n| n.to_owned()).collect();
    walk(&Cli::command(), &mut names);
    names
}

/// Names (never values) of `KMS_*` variables that nothing reads: usually a typo.
pub fn unknown_env_vars() -> Vec<String> {
    unknown_among(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()))
}

fn unknown_among(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let known = known_env_vars();
    names
        .into_iter()
        .filter(|k| k.starts_with("KMS_") && !known.contains(k))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn every_subcommand_contributes_its_variables() {
        let known = known_env_vars();
        for name in [
            // serve, and `signing-key rotate` which shares its arguments
            "KMS_GRPC_ADDR",
            "KMS_MASTER_KEY_FILE",
            "KMS_LOGIN_WAIT_SECONDS",
            // flattened argument groups
            "KMS_DATABASE_URL",
            "KMS_DATABASE_MAX_CONNECTIONS",
            "KMS_MAX_CONNECTIONS_PER_PEER",
            "KMS_MAX_PUBLIC_CALLS_PER_PEER",
            // healthcheck, user create
            "KMS_PROBE_ADDR",
            "KMS_PASSWORD_MIN_LENGTH",
            // outside clap
            "KMS_LOG_FORMAT",
            "KMS_TEST_POSTGRES_URL",
        ] {
            assert!(known.contains(name), "{name} is missing from {known:?}");
        }
        assert!(known.iter().all(|n| n.starts_with("KMS_")), "{known:?}");
    }

    #[test]
    fn only_unread_kms_names_are_reported() {
        let names = [
            "KMS_GRPC_ADDR",
            "KMS_LOG_FORMAT",
            "KMS_GRPC_ADRR",
            "PATH",
            "KMSX",
        ];
        assert_eq!(
            unknown_among(names.map(str::to_owned)),
            vec!["KMS_GRPC_ADRR".to_owned()]
        );
    }

    /// Every `KMS_*` variable that the code under `src/` reads with `std::env::var`
    /// is known: a new one read outside clap must be added to `READ_OUTSIDE_CLI`.
    #[test]
    fn variables_read_outside_clap_are_known() {
        fn scan(dir: &Path, found: &mut BTreeSet<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    scan(&path, found);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for (at, _) in text.match_indices("env::var") {
                        let rest = &text[at..];
                        let Some(open) = rest.find("(\"KMS_") else {
                            continue;
                        };
                        // Only a literal right after the call's parenthesis.
                        if !rest[..open]
                            .chars()
                            .all(|c| c.is_alphanumeric() || c == '_' || c == ':')
                        {
                            continue;
                        }
                        let name: String = rest[open + 2..]
                            .chars()
                            .take_while(|c| {
                                c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_'
                            })
                            .collect();
                        found.insert(name);
                    }
                }
            }
        }
        let mut read = BTreeSet::new();
        scan(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut read,
        );
        assert!(
            read.contains("KMS_LOG_FORMAT"),
            "the scan finds telemetry's read"
        );
        let known = known_env_vars();
        let missing: Vec<_> = read.difference(&known).collect();
        assert!(missing.is_empty(), "read but unknown: {missing:?}");
    }
}
