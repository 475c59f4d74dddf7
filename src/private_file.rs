//! Folders and files only their owner may read: the dev mode's generated secrets and
//! the command line's credentials.

use std::{fs, io::Write, path::Path};

/// Creates `dir` (and its parents) 0700; an existing folder open to others is
/// tightened to 0700. `Ok(Some(mode))`: it was open to others with that mode.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<Option<u32>> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "it is open to other users (mode {mode:o}) and cannot be made private: {e}"
                    ),
                )
            })?;
            return Ok(Some(mode));
        }
    }
    Ok(None)
}

/// Creates a file readable by its owner only (0600 from its creation, so never
/// readable by others even for a moment), writes `contents` and flushes them to disk.
/// Fails if the file exists.
pub fn write_new_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}
