//! The policy store (DESIGN §4 activation), kept by the parent: one
//! immutable `<dir>/<serial>/` directory per activated bundle, written only
//! after the bundle verified.
//!
//! A bundle is written into `<dir>/.tmp-<serial>-<pid>/`, every file and
//! directory fsynced, made read-only (files 0444, directories 0555), renamed
//! to `<dir>/<serial>` and `<dir>` fsynced. The state file, not this
//! directory, says which serial is active; the highest `<serial>` here only
//! raises the rollback floor.

use super::bundle::{Files, read_dir};
use super::reject::Reject;
use super::verify::Bundle;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

const FILE_MODE: u32 = 0o444;
const DIR_MODE: u32 = 0o555;
const STORE_MODE: u32 = 0o755;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Store {
    pub dir: PathBuf,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    /// Where serial `n` lives.
    pub fn path(&self, serial: u64) -> PathBuf {
        self.dir.join(serial.to_string())
    }

    /// The highest `<dir>/<serial>/` present (canonical decimal names of
    /// directories only); `None` if there is none or no store yet.
    pub fn highest_serial(&self) -> io::Result<Option<u64>> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut best = None;
        for ent in rd {
            let ent = ent?;
            let Some(serial) = ent.file_name().to_str().and_then(parse_serial) else {
                continue;
            };
            if ent.file_type()?.is_dir() {
                best = best.max(Some(serial));
            }
        }
        Ok(best)
    }

    /// Writes a verified bundle as `<dir>/<serial>`. An identical copy
    /// already there is fine (a re-activation); a different one is refused.
    pub fn install(&self, bundle: &Bundle) -> io::Result<PathBuf> {
        self.ensure_dir()?;
        let serial = bundle.policy.serial;
        let dest = self.path(serial);
        if self.check_existing(&dest, &bundle.files)? {
            return Ok(dest);
        }
        let tmp = self
            .dir
            .join(format!(".tmp-{serial}-{}", std::process::id()));
        if fs::symlink_metadata(&tmp).is_ok() {
            remove_tree(&tmp)?;
        }
        let result = write_tree(&tmp, &bundle.files).and_then(|()| fs::rename(&tmp, &dest));
        if let Err(e) = result {
            let _ = remove_tree(&tmp);
            // Lost a race with an identical install: still fine.
            if self.check_existing(&dest, &bundle.files)? {
                return Ok(dest);
            }
            return Err(e);
        }
        fsync_dir(&self.dir)?;
        Ok(dest)
    }

    /// Reads `<dir>/<serial>` back with the same checks as any bundle.
    pub fn read(&self, serial: u64) -> Result<Files, Reject> {
        read_dir(&self.path(serial))
    }

    fn ensure_dir(&self) -> io::Result<()> {
        if fs::symlink_metadata(&self.dir).is_err() {
            DirBuilder::new()
                .recursive(true)
                .mode(STORE_MODE)
                .create(&self.dir)?;
            fs::set_permissions(&self.dir, Permissions::from_mode(STORE_MODE))?;
        }
        Ok(())
    }

    /// `true` if `dest` holds exactly `files`; an error if it holds others.
    fn check_existing(&self, dest: &Path, files: &Files) -> io::Result<bool> {
        if fs::symlink_metadata(dest).is_err() {
            return Ok(false);
        }
        match read_dir(dest) {
            Ok(existing) if existing == *files => Ok(true),
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists with different content", dest.display()),
            )),
            Err(r) => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is unreadable: {r}", dest.display()),
            )),
        }
    }
}

/// Canonical decimal, as `u64::to_string` writes it.
fn parse_serial(name: &str) -> Option<u64> {
    let n: u64 = name.parse().ok()?;
    (n.to_string() == name).then_some(n)
}

/// Writes every file (fsynced, 0444) under `root`, then seals the directories.
fn write_tree(root: &Path, files: &Files) -> io::Result<()> {
    DirBuilder::new().mode(0o700).create(root)?;
    let mut dirs = vec![root.to_path_buf()];
    for (name, data) in files.iter() {
        let path = root.join(name);
        if let Some(parent) = path.parent()
            && !dirs.iter().any(|d| d == parent)
        {
            DirBuilder::new().mode(0o700).create(parent)?;
            dirs.push(parent.to_path_buf());
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&path)?;
        f.write_all(data)?;
        f.set_permissions(Permissions::from_mode(FILE_MODE))?;
        f.sync_all()?;
    }
    // Subdirectories first, so the root is sealed last.
    for d in dirs.iter().rev() {
        fs::set_permissions(d, Permissions::from_mode(DIR_MODE))?;
        fsync_dir(d)?;
    }
    Ok(())
}

pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes a (possibly sealed) temporary tree: directories are made
/// writable first, which an unprivileged owner needs.
fn remove_tree(root: &Path) -> io::Result<()> {
    if fs::symlink_metadata(root)?.is_dir() {
        fs::set_permissions(root, Permissions::from_mode(0o700))?;
        for ent in fs::read_dir(root)? {
            let ent = ent?;
            if ent.file_type()?.is_dir() {
                remove_tree(&ent.path())?;
            }
        }
    }
    fs::remove_dir_all(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_names() {
        assert_eq!(parse_serial("42"), Some(42));
        for bad in ["042", "+1", "-1", "x", "", ".tmp-1-2"] {
            assert_eq!(parse_serial(bad), None, "{bad}");
        }
    }

    #[test]
    fn highest_ignores_files_and_temp() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::new(d.path().join("policy"));
        assert_eq!(store.highest_serial().unwrap(), None);
        fs::create_dir_all(store.dir.join("7")).unwrap();
        fs::create_dir_all(store.dir.join("12")).unwrap();
        fs::create_dir_all(store.dir.join(".tmp-99-1")).unwrap();
        fs::write(store.dir.join("100"), b"").unwrap();
        assert_eq!(store.highest_serial().unwrap(), Some(12));
    }
}
