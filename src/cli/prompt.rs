//! Secrets never come from the command line: they are read from standard input
//! (`--password-stdin`, one per line) or asked for on the terminal without echo.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
};

use zeroize::Zeroizing;

use super::error::CliError;

/// The most read from standard input: a few lines of secrets.
const STDIN_LIMIT: u64 = 16 * 1024;

/// The first `count` lines of standard input, without their line ends.
pub fn stdin_lines(count: usize, what: &str) -> Result<Vec<Zeroizing<String>>, CliError> {
    let mut input = Zeroizing::new(String::new());
    std::io::stdin()
        .take(STDIN_LIMIT)
        .read_to_string(&mut input)
        .map_err(|e| CliError::other(format!("cannot read {what} from standard input: {e}")))?;
    let lines: Vec<Zeroizing<String>> = input
        .lines()
        .take(count)
        .map(|l| Zeroizing::new(l.trim_end_matches('\r').to_owned()))
        .collect();
    if lines.len() < count || lines.iter().any(|l| l.is_empty()) {
        return Err(CliError::other(format!(
            "expected {what} on standard input ({count} non-empty line{})",
            if count == 1 { "" } else { "s" }
        )));
    }
    Ok(lines)
}

/// Asks on the terminal, echoing what is typed (a username).
pub fn ask(label: &str, flag: &str) -> Result<String, CliError> {
    let mut tty = terminal(&format!(
        "no terminal to ask for the {} on: give {flag}",
        label.to_lowercase()
    ))?;
    write!(tty, "{label}: ")?;
    tty.flush()?;
    let mut line = String::new();
    BufReader::new(&tty).read_line(&mut line)?;
    let line = line.trim().to_owned();
    if line.is_empty() {
        return Err(CliError::other(format!("no {label} given")));
    }
    Ok(line)
}

/// Asks on the terminal without echo. Ctrl-C while asking restores the echo before
/// the command ends (exit status 130).
pub async fn ask_secret(label: &str) -> Result<Zeroizing<String>, CliError> {
    let mut tty =
        terminal("no terminal to ask on: give the secret on standard input (--password-stdin)")?;
    write!(tty, "{label}: ")?;
    tty.flush()?;
    let quiet = NoEcho::on(&tty)?;
    let reader = tty.try_clone()?;
    let read = tokio::task::spawn_blocking(move || {
        let mut line = Zeroizing::new(String::new());
        BufReader::new(&reader).read_line(&mut line).map(|_| line)
    });
    let line = tokio::select! {
        line = read => line.map_err(|e| CliError::other(e.to_string()))??,
        _ = tokio::signal::ctrl_c() => {
            drop(quiet);
            let _ = writeln!(tty);
            return Err(CliError { message: String::new(), exit: 130 });
        }
    };
    drop(quiet);
    let secret = Zeroizing::new(line.trim_end_matches(['\n', '\r']).to_owned());
    if secret.is_empty() {
        return Err(CliError::other(format!("no {label} given")));
    }
    Ok(secret)
}

/// Asks twice; the two must match.
pub async fn ask_new_secret(label: &str) -> Result<Zeroizing<String>, CliError> {
    let first = ask_secret(label).await?;
    let second = ask_secret(&format!("{label} (again)")).await?;
    if *first != *second {
        return Err(CliError::other("the two entries differ"));
    }
    Ok(first)
}

fn terminal(otherwise: &str) -> Result<File, CliError> {
    File::options()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|_| CliError::other(otherwise))
}

/// The terminal's echo is off while this lives.
#[cfg(target_os = "linux")]
struct NoEcho {
    tty: File,
    saved: rustix::termios::Termios,
}

#[cfg(target_os = "linux")]
impl NoEcho {
    fn on(tty: &File) -> Result<Self, CliError> {
        use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
        let saved = tcgetattr(tty).map_err(std::io::Error::from)?;
        let mut quiet = saved.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        // The newline the user types still moves the cursor on.
        quiet.local_modes.insert(LocalModes::ECHONL);
        tcsetattr(tty, OptionalActions::Flush, &quiet).map_err(std::io::Error::from)?;
        Ok(Self {
            tty: tty.try_clone()?,
            saved,
        })
    }
}

#[cfg(target_os = "linux")]
impl Drop for NoEcho {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            &self.tty,
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

#[cfg(not(target_os = "linux"))]
struct NoEcho;

#[cfg(not(target_os = "linux"))]
impl NoEcho {
    fn on(_tty: &File) -> Result<Self, CliError> {
        Err(CliError::other(
            "no prompt without echo on this platform: give the secret on standard input (--password-stdin)",
        ))
    }
}
