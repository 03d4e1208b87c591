//! Writing the files a container runtime reads, so that it never reads half of
//! one: each is written to a temporary file in the same directory and renamed
//! over the old one (a rename within a file system is atomic). The temporary
//! name starts with a dot and ends in `.tmp`, which no runtime loads as a CNI
//! configuration or runs as a plugin.

use std::fs::{self, File, Permissions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A file could not be read, written or removed.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct FileError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl FileError {
    pub fn new(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        FileError {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

/// The owner and permission bits a written file gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    pub mode: u32,
    /// `None` leaves the owner of the process.
    pub owner: Option<(u32, u32)>,
}

impl Ownership {
    /// Owned by this process, with `mode`.
    pub fn mode(mode: u32) -> Self {
        Ownership { mode, owner: None }
    }

    /// The mode and owner of an existing file.
    pub fn of(path: &Path) -> Result<Self, FileError> {
        let meta = fs::metadata(path).map_err(|e| FileError::new("cannot read", path, e))?;
        Ok(Ownership {
            mode: meta.mode() & 0o7777,
            owner: Some((meta.uid(), meta.gid())),
        })
    }
}

/// The temporary file `path` is written through.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Writes `contents` to `path` atomically, with `ownership`.
pub fn write_atomic(path: &Path, contents: &[u8], ownership: Ownership) -> Result<(), FileError> {
    let temp = temp_path(path);
    let result = write_then_rename(&temp, path, |file| file.write_all(contents), ownership);
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Copies `source` to `path` atomically, with `ownership` (a running plugin
/// keeps the file it started from; the next run starts the new one).
pub fn copy_atomic(source: &Path, path: &Path, ownership: Ownership) -> Result<(), FileError> {
    let mut from = File::open(source).map_err(|e| FileError::new("cannot open", source, e))?;
    let temp = temp_path(path);
    let result = write_then_rename(
        &temp,
        path,
        |file| std::io::copy(&mut from, file).map(drop),
        ownership,
    );
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

fn write_then_rename(
    temp: &Path,
    path: &Path,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
    ownership: Ownership,
) -> Result<(), FileError> {
    let mut file = File::create(temp).map_err(|e| FileError::new("cannot create", temp, e))?;
    fill(&mut file).map_err(|e| FileError::new("cannot write", temp, e))?;
    file.set_permissions(Permissions::from_mode(ownership.mode))
        .map_err(|e| FileError::new("cannot set the mode of", temp, e))?;
    if let Some((uid, gid)) = ownership.owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
            .map_err(|e| FileError::new("cannot set the owner of", temp, e))?;
    }
    file.sync_all()
        .map_err(|e| FileError::new("cannot flush", temp, e))?;
    drop(file);
    fs::rename(temp, path).map_err(|e| FileError::new("cannot rename into", path, e))
}

/// Removes `path`; a file already gone is not an error. Returns whether it was there.
pub fn remove_if_present(path: &Path) -> Result<bool, FileError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(FileError::new("cannot remove", path, e)),
    }
}

/// The contents of `path`, or `None` when it does not exist.
pub fn read_if_present(path: &Path) -> Result<Option<Vec<u8>>, FileError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FileError::new("cannot read", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_the_mode_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("10-net.conflist");
        write_atomic(&path, b"{}", Ownership::mode(0o640)).expect("written");
        assert_eq!(fs::read(&path).expect("read"), b"{}");
        let mode = fs::metadata(&path).expect("meta").mode() & 0o7777;
        assert_eq!(mode, 0o640);
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("10-net.conflist")]);
    }
}
