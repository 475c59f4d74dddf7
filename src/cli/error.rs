//! What a client command's failure prints and which exit status it ends with.
//!
//! Exit statuses (also in `kms --help` and the README):
//!
//! | status | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | any other failure (a file, the terminal, an INTERNAL answer) |
//! | 2 | the command line itself is wrong (clap's usage error) |
//! | 3 | not logged in, or the login ended (UNAUTHENTICATED): run `kms login` |
//! | 4 | PERMISSION_DENIED: the account lacks the role |
//! | 5 | NOT_FOUND |
//! | 6 | the server refused the input: INVALID_ARGUMENT, ALREADY_EXISTS, FAILED_PRECONDITION, OUT_OF_RANGE |
//! | 7 | the server is unreachable or overloaded: UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED |
//! | 8 | `keys verify`: the key is not VALID |
//! | 130 | interrupted (Ctrl-C) at a password prompt |

use std::process::ExitCode;

use tonic::Code;

use crate::grpc::code_name;

/// The exit statuses above, for `kms --help`.
pub const EXIT_STATUS_HELP: &str = "\
Exit status of client commands: 0 ok, 1 other failure, 2 usage error, 3 not logged in
(UNAUTHENTICATED), 4 PERMISSION_DENIED, 5 NOT_FOUND, 6 input refused (INVALID_ARGUMENT,
ALREADY_EXISTS, FAILED_PRECONDITION, OUT_OF_RANGE), 7 server unreachable or busy (UNAVAILABLE,
DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED), 8 `keys verify` found the key not VALID,
130 Ctrl-C at a password prompt.";

/// A failed client command: the line printed after `kms: ` and the exit status.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub exit: u8,
}

pub const EXIT_OTHER: u8 = 1;
pub const EXIT_UNAUTHENTICATED: u8 = 3;
pub const EXIT_NOT_VALID: u8 = 8;
const EXIT_PERMISSION_DENIED: u8 = 4;
const EXIT_NOT_FOUND: u8 = 5;
const EXIT_REFUSED: u8 = 6;
const EXIT_UNAVAILABLE: u8 = 7;

impl CliError {
    /// A local failure (exit 1).
    pub fn other(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            exit: EXIT_OTHER,
        }
    }

    /// No usable login for `server`.
    pub fn not_logged_in(server: &str, why: &str) -> Self {
        Self {
            message: format!("{why}: run `kms login --server {server}`"),
            exit: EXIT_UNAUTHENTICATED,
        }
    }

    /// The server cannot be reached at all.
    pub fn unreachable(server: &str, detail: &str) -> Self {
        Self {
            message: format!("UNAVAILABLE: cannot reach the KMS server at {server}: {detail}"),
            exit: EXIT_UNAVAILABLE,
        }
    }

    /// A gRPC status from the server at `server`: its code's name and its message
    /// (which names the field for INVALID_ARGUMENT).
    pub fn status(status: &tonic::Status, server: &str) -> Self {
        let code = status.code();
        let name = code_name(code);
        let message = status.message();
        let message = match code {
            Code::Unauthenticated => {
                format!("{name}: {message}: run `kms login --server {server}`")
            }
            Code::Unavailable => format!("{name}: {message} (server {server})"),
            // What tonic makes of an answer that is not gRPC at all: the URL names
            // some other port (the HTTP listener, say).
            Code::Internal | Code::Unknown
                if message.contains("protocol error") || message.contains("compression flag") =>
            {
                format!(
                    "{name}: {message}: is {server} the server's gRPC address (KMS_GRPC_ADDR), not its HTTP one?"
                )
            }
            _ => format!("{name}: {message}"),
        };
        Self {
            message,
            exit: exit_status(code),
        }
    }

    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.exit)
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        Self::other(e.to_string())
    }
}

fn exit_status(code: Code) -> u8 {
    match code {
        Code::Unauthenticated => EXIT_UNAUTHENTICATED,
        Code::PermissionDenied => EXIT_PERMISSION_DENIED,
        Code::NotFound => EXIT_NOT_FOUND,
        Code::InvalidArgument
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::OutOfRange => EXIT_REFUSED,
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => EXIT_UNAVAILABLE,
        Code::Ok
        | Code::Cancelled
        | Code::Unknown
        | Code::Aborted
        | Code::Unimplemented
        | Code::Internal
        | Code::DataLoss => EXIT_OTHER,
    }
}

/// An error and its causes on one line: transport errors say little at the top.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_name_the_code_and_keep_the_message() {
        let e = CliError::status(
            &tonic::Status::invalid_argument("service_name: must be 1..64 characters"),
            "http://h:1",
        );
        assert_eq!(
            e.message,
            "INVALID_ARGUMENT: service_name: must be 1..64 characters"
        );
        assert_eq!(e.exit, 6);
        let e = CliError::status(&tonic::Status::unauthenticated("expired"), "http://h:1");
        assert!(e.message.contains("kms login --server http://h:1"), "{e:?}");
        assert_eq!(e.exit, 3);
        let e = CliError::status(&tonic::Status::permission_denied("admin only"), "x");
        assert_eq!(
            (e.message.as_str(), e.exit),
            ("PERMISSION_DENIED: admin only", 4)
        );
    }
}
