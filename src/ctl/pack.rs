//! `qkdctl policy load PATH`: reads the bundle as the invoking user, so the
//! daemon never opens a client-named path (DESIGN §2). Runs in qkdctl only,
//! before it connects; reads PATH and nothing else.
//!
//! A directory is packed into an in-memory tar of its regular files (names
//! relative to PATH); a file is taken as the tar or gzip'd tar it must be.
//! Symlinks, devices, FIFOs and sockets are refused rather than followed or
//! skipped, so what is sent is exactly what the operator sees. The limits
//! keep the request under the daemon's [`MAX_REQUEST`]; the daemon checks
//! everything again.

use crate::proto::ctl::{MAX_REQUEST, Request};
use base64::Engine as _;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Most regular files a bundle directory may hold.
pub const MAX_FILES: usize = 64;
/// Most directories walked (the bundle format uses one level).
pub const MAX_DIRS: usize = 16;
/// Most bytes of file content (directory) or of the archive (file). A file
/// may not be larger than a packed directory: 4 MiB in base64 plus the JSON
/// around it is what fits the daemon's MAX_REQUEST line.
pub const MAX_BYTES: u64 = 4 << 20;

/// Reads PATH and builds the `policy-load` request; the error says why not.
pub fn policy_load_request(path: &Path) -> Result<Request, String> {
    let meta = fs::metadata(path).map_err(|e| format!("{}: {}", path.display(), io_msg(&e)))?;
    let bytes = if meta.is_dir() {
        pack_dir(path)?
    } else if meta.is_file() {
        read_archive(path)?
    } else {
        return Err(format!(
            "{}: not a directory or a regular file",
            path.display()
        ));
    };
    let bundle_b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    // Base64 plus the JSON around it; checked so a too-big bundle is refused
    // here with a reason instead of being cut off by the daemon.
    if bundle_b64.len() + 64 > MAX_REQUEST {
        return Err(format!(
            "{}: bundle too large ({} bytes packed)",
            path.display(),
            bytes.len()
        ));
    }
    Ok(Request::PolicyLoad { bundle_b64 })
}

/// A tar or gzip'd tar, read whole (bounded).
fn read_archive(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = read_regular(path, MAX_BYTES)?;
    let gzip = bytes.starts_with(&[0x1f, 0x8b]);
    let tar = bytes.get(257..262) == Some(b"ustar");
    if !gzip && !tar {
        return Err(format!(
            "{}: not a tar or gzip'd tar archive (give a bundle directory or archive)",
            path.display()
        ));
    }
    Ok(bytes)
}

/// Packs the regular files under `root` into a tar, names relative to it.
fn pack_dir(root: &Path) -> Result<Vec<u8>, String> {
    let mut files = Vec::new();
    let mut dirs = 0;
    walk(root, "", &mut files, &mut dirs)?;
    files.sort();
    let mut builder = tar::Builder::new(Vec::new());
    let mut total = 0u64;
    for name in &files {
        let path = root.join(name);
        let data = read_regular(&path, MAX_BYTES - total)?;
        total += data.len() as u64;
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_size(data.len() as u64);
        builder
            .append_data(&mut header, name, data.as_slice())
            .map_err(|e| format!("{}: cannot pack: {}", path.display(), io_msg(&e)))?;
    }
    if files.is_empty() {
        return Err(format!("{}: no files in bundle directory", root.display()));
    }
    builder
        .into_inner()
        .map_err(|e| format!("{}: cannot pack: {}", root.display(), io_msg(&e)))
}

/// Collects the relative names of regular files; refuses anything else.
fn walk(root: &Path, rel: &str, files: &mut Vec<String>, dirs: &mut usize) -> Result<(), String> {
    *dirs += 1;
    if *dirs > MAX_DIRS {
        return Err(format!(
            "{}: more than {MAX_DIRS} directories in bundle",
            root.display()
        ));
    }
    let dir = root.join(rel);
    let entries = fs::read_dir(&dir).map_err(|e| format!("{}: {}", dir.display(), io_msg(&e)))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {}", dir.display(), io_msg(&e)))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            return Err(format!("{}: file name is not UTF-8", path.display()));
        };
        let rel_name = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        // file_type() does not follow symlinks.
        let ft = entry
            .file_type()
            .map_err(|e| format!("{}: {}", path.display(), io_msg(&e)))?;
        if ft.is_dir() {
            walk(root, &rel_name, files, dirs)?;
        } else if ft.is_file() {
            files.push(rel_name);
            if files.len() > MAX_FILES {
                return Err(format!(
                    "{}: more than {MAX_FILES} files in bundle",
                    root.display()
                ));
            }
        } else if ft.is_symlink() {
            return Err(format!(
                "{}: is a symbolic link; bundles hold regular files only",
                path.display()
            ));
        } else {
            return Err(format!(
                "{}: not a regular file; bundles hold regular files only",
                path.display()
            ));
        }
    }
    Ok(())
}

/// Reads a regular file of at most `cap` bytes. O_NOFOLLOW and the fstat
/// after open close the gap between the directory walk and the read.
fn read_regular(path: &Path, cap: u64) -> Result<Vec<u8>, String> {
    let err = |e: std::io::Error| format!("{}: {}", path.display(), io_msg(&e));
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(err)?;
    if !file.metadata().map_err(err)?.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    let mut data = Vec::new();
    file.take(cap + 1).read_to_end(&mut data).map_err(err)?;
    if data.len() as u64 > cap {
        return Err(format!(
            "{}: bundle larger than {} MiB",
            path.display(),
            MAX_BYTES >> 20
        ));
    }
    Ok(data)
}

/// An I/O error as a person reads it: `No such file or directory`, without
/// Rust's ` (os error 2)` suffix.
pub fn io_msg(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(req: Request) -> Vec<(String, Vec<u8>)> {
        let Request::PolicyLoad { bundle_b64 } = req else {
            panic!("not policy-load")
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(bundle_b64)
            .unwrap();
        let mut ar = tar::Archive::new(bytes.as_slice());
        let mut out = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_str().unwrap().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            out.push((name, data));
        }
        out
    }

    #[test]
    fn packs_directory_sorted() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("anchors")).unwrap();
        fs::write(d.path().join("policy.toml"), "serial = 1\n").unwrap();
        fs::write(d.path().join("anchors/open.pf"), "pass\n").unwrap();
        let got = decode(policy_load_request(d.path()).unwrap());
        assert_eq!(
            got,
            vec![
                ("anchors/open.pf".into(), b"pass\n".to_vec()),
                ("policy.toml".into(), b"serial = 1\n".to_vec()),
            ]
        );
    }

    #[test]
    fn refuses_odd_entries_and_limits() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a"), "x").unwrap();
        std::os::unix::fs::symlink("a", d.path().join("b")).unwrap();
        let e = policy_load_request(d.path()).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");

        let d = tempfile::tempdir().unwrap();
        for i in 0..=MAX_FILES {
            fs::write(d.path().join(format!("f{i}")), "x").unwrap();
        }
        let e = policy_load_request(d.path()).unwrap_err();
        assert!(e.contains("more than 64 files"), "{e}");

        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("big"), vec![0u8; MAX_BYTES as usize + 1]).unwrap();
        let e = policy_load_request(d.path()).unwrap_err();
        assert!(e.contains("larger than 4 MiB"), "{e}");

        let d = tempfile::tempdir().unwrap();
        let e = policy_load_request(d.path()).unwrap_err();
        assert!(e.contains("no files"), "{e}");
    }

    #[test]
    fn archive_file_sent_as_is() {
        let d = tempfile::tempdir().unwrap();
        let gz = d.path().join("b.tgz");
        fs::write(&gz, [0x1f, 0x8b, 8, 0, 1, 2, 3]).unwrap();
        let Request::PolicyLoad { bundle_b64 } = policy_load_request(&gz).unwrap() else {
            panic!()
        };
        assert_eq!(bundle_b64, "H4sIAAECAw==");
        let txt = d.path().join("policy.toml");
        fs::write(&txt, "serial = 1\n").unwrap();
        let e = policy_load_request(&txt).unwrap_err();
        assert!(e.contains("not a tar"), "{e}");
        let e = policy_load_request(&d.path().join("missing")).unwrap_err();
        assert!(e.ends_with("missing: No such file or directory"), "{e}");
    }
}
