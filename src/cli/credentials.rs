//! The tokens of `kms login`, kept in `credentials.json` in the configuration folder
//! (`KMS_CONFIG_DIR`, default `~/.config/kms`), one login per server URL so that a
//! token is never sent to a server that did not issue it.
//!
//! The folder is 0700 and the file 0600. A write goes to a temporary file created 0600
//! in the same folder, is flushed to disk, then renamed over the old file: a reader
//! (another `kms` running at the same time) sees the old or the new file, never half.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::error::CliError;
use crate::private_file;

const FILE_NAME: &str = "credentials.json";
const LOCK_NAME: &str = ".credentials.lock";

/// One login: the tokens and when they stop working (Unix seconds).
#[derive(Clone, Serialize, Deserialize)]
pub struct Login {
    pub username: String,
    pub access_token: String,
    pub access_expires_at: i64,
    pub refresh_token: String,
    pub refresh_expires_at: i64,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("username", &self.username)
            .field("access_expires_at", &self.access_expires_at)
            .field("refresh_expires_at", &self.refresh_expires_at)
            .finish_non_exhaustive()
    }
}

#[derive(Default, Serialize, Deserialize)]
struct Contents {
    #[serde(default)]
    servers: BTreeMap<String, Login>,
}

/// The credentials file of one configuration folder.
#[derive(Debug, Clone)]
pub struct CredentialStore {
    dir: PathBuf,
}

impl CredentialStore {
    /// `dir`, else `$XDG_CONFIG_HOME/kms`, else `$HOME/.config/kms`.
    pub fn new(dir: Option<PathBuf>) -> Result<Self, CliError> {
        let dir = match dir {
            Some(dir) => dir,
            None => default_dir().ok_or_else(|| {
                CliError::other("no configuration folder: set KMS_CONFIG_DIR or HOME")
            })?,
        };
        Ok(Self { dir })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    pub fn load(&self, server: &str) -> Result<Option<Login>, CliError> {
        Ok(self.read()?.servers.remove(server))
    }

    /// Keeps `login` for `server`, under the lock: a login or logout never overwrites
    /// tokens another `kms` is refreshing meanwhile.
    pub fn save(&self, server: &str, login: Login) -> Result<(), CliError> {
        self.lock()?.save(server, login)
    }

    /// Forgets the login to `server`, under the lock; false when there was none.
    pub fn remove(&self, server: &str) -> Result<bool, CliError> {
        self.lock()?.remove(server)
    }

    /// An exclusive lock on the folder's credentials, held until the guard is dropped:
    /// every read-then-write of the file goes through one, so two `kms` processes
    /// never both spend one refresh token, nor undo each other's writes.
    pub fn lock(&self) -> Result<Locked<'_>, CliError> {
        ensure_private_dir(&self.dir)?;
        let path = self.dir.join(LOCK_NAME);
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options
            .open(&path)
            .map_err(|e| CliError::other(format!("cannot open {}: {e}", path.display())))?;
        file.lock()
            .map_err(|e| CliError::other(format!("cannot lock {}: {e}", path.display())))?;
        Ok(Locked {
            store: self,
            _file: file,
        })
    }

    fn read(&self) -> Result<Contents, CliError> {
        let path = self.path();
        tighten(&path);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                CliError::other(format!(
                    "{} is damaged ({e}): delete it and run `kms login`",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Contents::default()),
            Err(e) => Err(CliError::other(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    fn write(&self, contents: &Contents) -> Result<(), CliError> {
        let bytes = serde_json::to_vec_pretty(contents)
            .map_err(|e| CliError::other(format!("cannot encode the credentials: {e}")))?;
        ensure_private_dir(&self.dir)?;
        let path = self.path();
        let temp = self.dir.join(format!(
            ".{FILE_NAME}.{}.{}",
            std::process::id(),
            temp_suffix()
        ));
        let written =
            private_file::write_new_private(&temp, &bytes).and_then(|()| fs::rename(&temp, &path));
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(CliError::other(format!(
                "cannot write {}: {e}",
                path.display()
            )));
        }
        // The rename itself reaches the disk with the folder's entry.
        if let Ok(dir) = fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

/// The credentials while this process holds their lock (`CredentialStore::lock`).
pub struct Locked<'a> {
    store: &'a CredentialStore,
    _file: fs::File,
}

impl Locked<'_> {
    pub fn load(&self, server: &str) -> Result<Option<Login>, CliError> {
        self.store.load(server)
    }

    pub fn save(&self, server: &str, login: Login) -> Result<(), CliError> {
        let mut contents = self.store.read()?;
        contents.servers.insert(server.to_owned(), login);
        self.store.write(&contents)
    }

    pub fn remove(&self, server: &str) -> Result<bool, CliError> {
        let mut contents = self.store.read()?;
        let had = contents.servers.remove(server).is_some();
        if had {
            self.store.write(&contents)?;
        }
        Ok(had)
    }
}

/// A credentials file others may read (copied in by hand, say) is made 0600 before it
/// is used, with a word on stderr: its tokens may have been read meanwhile.
fn tighten(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let Ok(meta) = fs::metadata(path) else { return };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            let fixed = fs::set_permissions(path, fs::Permissions::from_mode(0o600));
            super::output::note(&format!(
                "kms: {} was readable by others (mode {mode:o}){}; consider `kms logout` and a new login",
                path.display(),
                if fixed.is_ok() {
                    ", made it 0600"
                } else {
                    " and could not be made private"
                }
            ));
        }
    }
}

fn default_dir() -> Option<PathBuf> {
    if let Some(xdg) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(xdg).join("kms"));
    }
    let home = std::env::var_os("HOME").filter(|v| !v.is_empty())?;
    Some(PathBuf::from(home).join(".config").join("kms"))
}

fn temp_suffix() -> String {
    crate::crypto::random::bytes::<6>()
        .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
        .unwrap_or_default()
}

fn ensure_private_dir(dir: &Path) -> Result<(), CliError> {
    private_file::ensure_private_dir(dir)
        .map(|_| ())
        .map_err(|e| CliError::other(format!("cannot use {}: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(token: &str) -> Login {
        Login {
            username: "root".into(),
            access_token: token.into(),
            access_expires_at: 1,
            refresh_token: format!("r-{token}"),
            refresh_expires_at: 2,
        }
    }

    #[test]
    fn logins_are_kept_per_server_in_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = CredentialStore::new(Some(dir.path().join("kms"))).unwrap();
        assert!(store.load("http://a").unwrap().is_none());
        store.save("http://a", login("a")).unwrap();
        store.save("http://b", login("b")).unwrap();
        assert_eq!(store.load("http://a").unwrap().unwrap().access_token, "a");
        assert!(store.remove("http://a").unwrap());
        assert!(!store.remove("http://a").unwrap());
        assert_eq!(store.load("http://b").unwrap().unwrap().access_token, "b");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&store.path()), 0o600);
            assert_eq!(mode(&dir.path().join("kms")), 0o700);
        }
        // No temporary file is left behind: the credentials and the lock file only.
        let mut names: Vec<String> = fs::read_dir(dir.path().join("kms"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [LOCK_NAME, FILE_NAME]);
        assert!(!format!("{:?}", login("secret-token")).contains("secret-token"));
    }
}
