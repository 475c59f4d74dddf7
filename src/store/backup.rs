//! `kms backup`: a consistent copy of a SQLite database while servers keep writing
//! to it. `VACUUM INTO` reads one snapshot (a read transaction, which WAL lets run
//! beside the writer) and writes it as a compact database. It writes into an empty
//! owner-only temporary file beside the target, which is then fsynced and linked into
//! place: the target either does not exist or is a complete copy, never a torn one,
//! and an existing file is never overwritten.

use std::{
    fs::{File, OpenOptions},
    io,
    path::{Path, PathBuf},
};

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use sqlx::sqlite::SqliteConnectOptions;

use super::{Store, StoreError};

/// The database file of a SQLite URL (`None` for PostgreSQL, or a URL without a file).
pub fn sqlite_file(url: &str) -> Option<PathBuf> {
    // An in-memory database has no file to copy (sqlx names it `file:sqlx-in-memory-N`).
    if !url.starts_with("sqlite:") || url.contains(":memory:") || url.contains("mode=memory") {
        return None;
    }
    url.parse::<SqliteConnectOptions>()
        .ok()
        .map(|o| o.get_filename().to_path_buf())
        .filter(|f| !f.as_os_str().is_empty() && f.as_os_str() != ":memory:")
}

fn io_error(what: &str, path: &Path, e: &io::Error) -> StoreError {
    StoreError::Config(format!("{what} {}: {e}", path.display()))
}

impl Store {
    /// Writes a consistent copy of this SQLite database to `out` (mode 0600), which
    /// must not exist. Returns its size in bytes.
    pub async fn backup_sqlite(&self, out: &Path) -> Result<u64, StoreError> {
        if self.sqlite_file.is_none() {
            return Err(StoreError::Config(
                "only a SQLite database is backed up by kms backup".into(),
            ));
        }
        if out.exists() {
            return Err(StoreError::Config(format!(
                "{} exists already: kms backup never overwrites a file",
                out.display()
            )));
        }
        let name = out
            .file_name()
            .ok_or_else(|| StoreError::Config(format!("{} names no file", out.display())))?;
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let suffix: [u8; 6] = crate::crypto::random::bytes()
            .map_err(|e| StoreError::Other(format!("randomness: {e}")))?;
        let hex: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        let temp = dir.join(format!(".{}.{hex}.tmp", name.to_string_lossy()));
        // Empty and owner-only before SQLite writes a byte: VACUUM INTO accepts an
        // empty file and keeps its permissions, so the copy is never readable by others.
        create_private(&temp).map_err(|e| io_error("cannot create", &temp, &e))?;
        let written = self.vacuum_into(&temp).await.and_then(|()| {
            let size = publish(&temp, out, &dir)?;
            Ok(size)
        });
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written
    }

    async fn vacuum_into(&self, temp: &Path) -> Result<(), StoreError> {
        let target = temp
            .to_str()
            .ok_or_else(|| StoreError::Config(format!("{} is not valid UTF-8", temp.display())))?;
        self.db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Sqlite,
                "VACUUM INTO ?",
                [target.into()],
            ))
            .await?;
        Ok(())
    }
}

fn create_private(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// fsyncs `temp`, links it as `out` (failing if `out` appeared meanwhile), removes the
/// temporary name and fsyncs the directory, so that the new name survives a crash.
fn publish(temp: &Path, out: &Path, dir: &Path) -> Result<u64, StoreError> {
    let file = File::open(temp).map_err(|e| io_error("cannot open", temp, &e))?;
    file.sync_all()
        .map_err(|e| io_error("cannot fsync", temp, &e))?;
    let size = file
        .metadata()
        .map_err(|e| io_error("cannot read", temp, &e))?
        .len();
    drop(file);
    // A hard link, not a rename: it refuses to replace a file created since the check.
    std::fs::hard_link(temp, out).map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => StoreError::Config(format!(
            "{} exists already: kms backup never overwrites a file",
            out.display()
        )),
        _ => io_error("cannot create", out, &e),
    })?;
    std::fs::remove_file(temp).map_err(|e| io_error("cannot remove", temp, &e))?;
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("cannot fsync", dir, &e))?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_of_a_sqlite_url() {
        assert_eq!(
            sqlite_file("sqlite://kms-data/kms.db?mode=rwc"),
            Some(PathBuf::from("kms-data/kms.db"))
        );
        assert_eq!(sqlite_file("postgres://u@h/db"), None);
        assert_eq!(sqlite_file("sqlite::memory:"), None);
    }
}
