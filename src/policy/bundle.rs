//! Reading a bundle into memory (DESIGN §4), in the parent or in `qkdctl`.
//!
//! A bundle arrives as a directory or as the bytes of a tar or gzip'd tar.
//! Nothing is written anywhere here: the result is a [`Files`] map that the
//! verifier checks before anything changes. Limits are enforced while reading,
//! so a hostile archive (gzip bomb, thousands of entries, symlinks, `../`)
//! is refused before it costs more than the limits allow.

use super::reject::{Reject, printable};
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// At most this many regular files.
pub const MAX_FILES: usize = 64;
/// At most this many bytes per file.
pub const MAX_FILE_SIZE: u64 = 1 << 20;
/// At most this many bytes in all files together (after decompression).
pub const MAX_TOTAL_SIZE: u64 = 4 << 20;
/// Largest bundle archive read from a file (the GitOps spool, `qkdctl
/// policy verify`), compressed or not.
pub const MAX_ARCHIVE: u64 = 8 << 20;
/// Directory, long-name and pax entries allowed in a tar besides the files.
const MAX_OTHER_ENTRIES: usize = 64;
/// Tar headers and padding on top of the file contents.
const MAX_TAR_OVERHEAD: u64 = 256 << 10;
/// Longest accepted name (both components).
const MAX_NAME_LEN: usize = 255;

/// The files of a bundle by relative name (`policy.toml`, `anchors/open.nft`).
/// Only [`Files::from_map`] builds one, so every instance met the limits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Files(BTreeMap<String, Vec<u8>>);

impl Files {
    /// Checks names and limits.
    pub fn from_map(map: BTreeMap<String, Vec<u8>>) -> Result<Files, Reject> {
        let mut limits = Limits::default();
        for (name, data) in &map {
            check_name(name)?;
            limits.add_file(name, data.len() as u64)?;
        }
        no_file_is_a_directory(&map)?;
        Ok(Files(map))
    }
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0.get(name).map(Vec::as_slice)
    }
    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)?$`, no `.` or `..` component.
pub fn check_name(name: &str) -> Result<(), Reject> {
    if name.is_empty() {
        return Err(Reject::bad_name(name, "is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Reject::bad_name(name, "is too long"));
    }
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 2 {
        return Err(Reject::bad_name(
            name,
            "is nested too deep (one subdirectory level at most)",
        ));
    }
    for p in parts {
        check_component(name, p)?;
    }
    Ok(())
}

fn check_component(name: &str, part: &str) -> Result<(), Reject> {
    if part.is_empty() {
        return Err(Reject::bad_name(name, "has an empty path component"));
    }
    if part == "." || part == ".." {
        return Err(Reject::bad_name(name, "has a \".\" or \"..\" component"));
    }
    let ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    if !part.bytes().all(ok) {
        return Err(Reject::bad_name(
            name,
            "has characters outside [A-Za-z0-9._-]",
        ));
    }
    Ok(())
}

/// Running totals while reading.
#[derive(Default)]
struct Limits {
    files: usize,
    total: u64,
}

impl Limits {
    fn add_file(&mut self, name: &str, size: u64) -> Result<(), Reject> {
        self.files += 1;
        if self.files > MAX_FILES {
            return Err(Reject::too_large(format!("more than {MAX_FILES} files")));
        }
        if size > MAX_FILE_SIZE {
            return Err(Reject::too_large(format!(
                "{} is larger than {MAX_FILE_SIZE} bytes",
                printable(name)
            )));
        }
        self.total += size;
        if self.total > MAX_TOTAL_SIZE {
            return Err(Reject::too_large(format!(
                "files total more than {MAX_TOTAL_SIZE} bytes"
            )));
        }
        Ok(())
    }
}

/// Reads at most `max` bytes; more is a `too-large` rejection, not truncation.
fn read_limited(r: impl Read, name: &str, max: u64) -> Result<Vec<u8>, Reject> {
    let mut data = Vec::new();
    r.take(max + 1)
        .read_to_end(&mut data)
        .map_err(|e| io_reject(name, e))?;
    if data.len() as u64 > max {
        return Err(Reject::too_large(format!(
            "{} is larger than {max} bytes",
            printable(name)
        )));
    }
    Ok(data)
}

fn unreadable(what: &str, e: &dyn std::fmt::Display) -> Reject {
    Reject::Unreadable {
        what: printable(what),
        msg: e.to_string(),
    }
}

fn kind_of(ft: fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "symlink"
    } else if ft.is_dir() {
        "directory"
    } else if ft.is_block_device() || ft.is_char_device() {
        "device"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

// ---------------------------------------------------------------- directory

/// Reads a bundle directory: regular files, subdirectories one level deep.
/// Symlinks anywhere inside are refused (the root itself may be one: the
/// operator named it).
pub fn read_dir(path: &Path) -> Result<Files, Reject> {
    let shown = path.display().to_string();
    let meta = fs::metadata(path).map_err(|e| unreadable(&shown, &e))?;
    if !meta.is_dir() {
        return Err(unreadable(&shown, &"not a directory"));
    }
    let mut map = BTreeMap::new();
    let mut limits = Limits::default();
    for (name, full) in list_dir(path, None)? {
        let meta = fs::symlink_metadata(&full).map_err(|e| unreadable(&name, &e))?;
        if meta.is_dir() {
            for (sub, full) in list_dir(&full, Some(&name))? {
                read_dir_file(&sub, &full, &mut limits, &mut map)?;
            }
        } else {
            read_dir_file(&name, &full, &mut limits, &mut map)?;
        }
    }
    Ok(Files(map))
}

/// Reads a bundle archive from a path someone else may write to (the
/// GitOps spool): opened without following a symlink and without blocking
/// on a FIFO, checked with fstat to be a regular file, read with a limit
/// (a device such as /dev/zero never ends).
pub fn read_archive_file(path: &Path, max: u64) -> Result<Vec<u8>, Reject> {
    let shown = path.display().to_string();
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| unreadable(&shown, &e))?;
    let meta = file.metadata().map_err(|e| unreadable(&shown, &e))?;
    if !meta.is_file() {
        return Err(Reject::NotRegular {
            name: shown,
            kind: kind_of(meta.file_type()).to_string(),
        });
    }
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, max + 1), &mut buf)
        .map_err(|e| unreadable(&shown, &e))?;
    if buf.len() as u64 > max {
        return Err(unreadable(&shown, &format!("larger than {max} bytes")));
    }
    Ok(buf)
}

/// Names in `dir` (prefixed by `parent/`), checked, sorted.
fn list_dir(dir: &Path, parent: Option<&str>) -> Result<Vec<(String, std::path::PathBuf)>, Reject> {
    let shown = dir.display().to_string();
    let mut out = Vec::new();
    for ent in fs::read_dir(dir).map_err(|e| unreadable(&shown, &e))? {
        let ent = ent.map_err(|e| unreadable(&shown, &e))?;
        let raw = ent.file_name();
        let Some(base) = raw.to_str() else {
            return Err(Reject::bad_name(&raw.to_string_lossy(), "is not UTF-8"));
        };
        let name = match parent {
            Some(p) => format!("{p}/{base}"),
            None => base.to_string(),
        };
        check_name(&name)?;
        if out.len() >= MAX_FILES + MAX_OTHER_ENTRIES {
            return Err(Reject::too_large(format!("more than {MAX_FILES} files")));
        }
        out.push((name, ent.path()));
    }
    out.sort();
    Ok(out)
}

fn read_dir_file(
    name: &str,
    full: &Path,
    limits: &mut Limits,
    map: &mut BTreeMap<String, Vec<u8>>,
) -> Result<(), Reject> {
    let meta = fs::symlink_metadata(full).map_err(|e| unreadable(name, &e))?;
    if meta.is_dir() {
        return Err(Reject::bad_name(
            name,
            "is a directory nested too deep (one subdirectory level at most)",
        ));
    }
    if !meta.is_file() {
        return Err(Reject::NotRegular {
            name: name.to_string(),
            kind: kind_of(meta.file_type()).to_string(),
        });
    }
    limits.add_file(name, meta.len())?;
    // O_NOFOLLOW + fstat: the entry may have been swapped since the lstat.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(full)
        .map_err(|e| unreadable(name, &e))?;
    let meta = file.metadata().map_err(|e| unreadable(name, &e))?;
    if !meta.is_file() {
        return Err(Reject::NotRegular {
            name: name.to_string(),
            kind: kind_of(meta.file_type()).to_string(),
        });
    }
    let data = read_limited(file, name, MAX_FILE_SIZE)?;
    // The size may have changed since the lstat: count what was read.
    limits.total = limits.total - meta.len().min(limits.total) + data.len() as u64;
    if limits.total > MAX_TOTAL_SIZE {
        return Err(Reject::too_large(format!(
            "files total more than {MAX_TOTAL_SIZE} bytes"
        )));
    }
    map.insert(name.to_string(), data);
    Ok(())
}

// -------------------------------------------------------------------- tar

/// Reads a tar or gzip'd tar (detected by the gzip magic `1f 8b`) held in
/// memory. A leading `./` and one common top-level directory are stripped, so
/// both `tar czf b.tgz -C dir .` and `tar czf b.tgz bundle/` work.
pub fn read_bytes(bytes: &[u8]) -> Result<Files, Reject> {
    let max_stream = MAX_TOTAL_SIZE + MAX_TAR_OVERHEAD;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let gz = flate2::read::GzDecoder::new(bytes);
        read_tar(Capped::new(gz, max_stream))
    } else {
        if bytes.len() as u64 > max_stream {
            return Err(Reject::too_large(format!(
                "archive is larger than {max_stream} bytes"
            )));
        }
        read_tar(bytes)
    }
}

/// A reader that fails once more than `left` bytes were asked for: the gzip
/// bomb guard (the tar reader sees an error, not a silent end).
struct Capped<R> {
    inner: R,
    left: u64,
    max: u64,
}

impl<R: Read> Capped<R> {
    fn new(inner: R, max: u64) -> Capped<R> {
        Capped {
            inner,
            left: max,
            max,
        }
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // Probe: is there more? Only end of stream is acceptable here.
            let mut one = [0u8; 1];
            return match self.inner.read(&mut one)? {
                0 => Ok(0),
                _ => Err(io::Error::new(
                    io::ErrorKind::FileTooLarge,
                    format!("archive decompresses to more than {} bytes", self.max),
                )),
            };
        }
        let n = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let got = self.inner.read(&mut buf[..n])?;
        self.left -= got as u64;
        Ok(got)
    }
}

/// One accepted tar entry before the top-level directory is stripped.
enum Entry {
    File(Vec<u8>),
    Dir,
}

fn read_tar(r: impl Read) -> Result<Files, Reject> {
    let mut archive = tar::Archive::new(r);
    let mut entries: Vec<(Vec<String>, Entry)> = Vec::new();
    let mut limits = Limits::default();
    let mut others = 0usize;
    let iter = archive.entries().map_err(|e| io_reject("archive", e))?;
    for ent in iter {
        let ent = ent.map_err(|e| io_reject("archive", e))?;
        let path = String::from_utf8(ent.path_bytes().into_owned()).map_err(|e| {
            Reject::bad_name(&String::from_utf8_lossy(e.as_bytes()), "is not UTF-8")
        })?;
        let parts = tar_components(&path)?;
        let kind = ent.header().entry_type();
        if kind.is_dir() {
            others += 1;
            if others > MAX_OTHER_ENTRIES {
                return Err(Reject::too_large(
                    "too many directory entries in the archive",
                ));
            }
            if !parts.is_empty() {
                entries.push((parts, Entry::Dir));
            }
        } else if kind == tar::EntryType::XGlobalHeader {
            // pax global header (`git archive` writes the commit id there).
            others += 1;
            if others > MAX_OTHER_ENTRIES {
                return Err(Reject::too_large("too many entries in the archive"));
            }
        } else if kind.is_file() {
            if parts.is_empty() {
                return Err(Reject::bad_name(&path, "is not a file name"));
            }
            // Counted as read: a pax `size` record overrides the header's
            // field, and the entry yields that many bytes.
            let data = read_limited(ent, &path, MAX_FILE_SIZE)?;
            limits.add_file(&path, data.len() as u64)?;
            entries.push((parts, Entry::File(data)));
        } else {
            return Err(Reject::NotRegular {
                name: printable(&path),
                kind: tar_kind(kind).to_string(),
            });
        }
    }
    assemble(entries)
}

/// A `Capped` overflow surfaces as an I/O error of kind `FileTooLarge`
/// (the tar crate keeps the kind when it wraps errors).
fn io_reject(what: &str, e: io::Error) -> Reject {
    if e.kind() == io::ErrorKind::FileTooLarge {
        return Reject::too_large(e.to_string());
    }
    unreadable(what, &e)
}

fn tar_kind(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Symlink => "symlink",
        tar::EntryType::Link => "hard link",
        tar::EntryType::Char | tar::EntryType::Block => "device",
        tar::EntryType::Fifo => "fifo",
        tar::EntryType::GNUSparse => "sparse file",
        _ => "special entry",
    }
}

/// Splits a tar path, dropping `./` prefixes and a trailing `/`; refuses
/// absolute paths and `.`/`..` anywhere else.
fn tar_components(path: &str) -> Result<Vec<String>, Reject> {
    if path.starts_with('/') {
        return Err(Reject::bad_name(path, "is an absolute path"));
    }
    let mut rest = path.trim_end_matches('/');
    while let Some(r) = rest.strip_prefix("./") {
        rest = r;
    }
    if rest == "." || rest.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<String> = rest.split('/').map(str::to_string).collect();
    for p in &parts {
        check_component(path, p)?;
    }
    if parts.len() > 3 {
        return Err(Reject::bad_name(path, "is nested too deep"));
    }
    Ok(parts)
}

/// Strips one common top-level directory when no file sits at the root
/// (a valid bundle always has `policy.toml` there), then checks the names.
fn assemble(entries: Vec<(Vec<String>, Entry)>) -> Result<Files, Reject> {
    let strip = common_top(&entries);
    let mut map = BTreeMap::new();
    for (parts, entry) in entries {
        let parts = if strip { &parts[1..] } else { &parts[..] };
        let name = parts.join("/");
        match entry {
            Entry::Dir if parts.is_empty() => {}
            Entry::Dir if parts.len() == 1 => check_name(&name)?,
            Entry::Dir => {
                return Err(Reject::bad_name(
                    &name,
                    "is a directory nested too deep (one subdirectory level at most)",
                ));
            }
            Entry::File(data) => {
                check_name(&name)?;
                if map.insert(name.clone(), data).is_some() {
                    return Err(Reject::bad_name(&name, "appears twice in the archive"));
                }
            }
        }
    }
    no_file_is_a_directory(&map)?;
    Ok(Files(map))
}

/// No directory tree holds a name as both a file and a directory: the
/// store could never write it, and `signify -C` in the tree could never
/// check it.
fn no_file_is_a_directory(map: &BTreeMap<String, Vec<u8>>) -> Result<(), Reject> {
    for name in map.keys() {
        if let Some((dir, _)) = name.split_once('/')
            && map.contains_key(dir)
        {
            return Err(Reject::bad_name(dir, "is both a file and a directory"));
        }
    }
    Ok(())
}

fn common_top(entries: &[(Vec<String>, Entry)]) -> bool {
    let Some((first, _)) = entries.first() else {
        return false;
    };
    let top = &first[0];
    let file_at_root = entries
        .iter()
        .any(|(p, e)| p.len() == 1 && matches!(e, Entry::File(_)));
    !file_at_root && entries.iter().all(|(p, _)| &p[0] == top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "policy.toml",
            "anchors/open.nft",
            "a-b_c.d",
            "SHA256.sig",
            "..a",
        ] {
            check_name(ok).unwrap();
        }
        for bad in [
            "", ".", "..", "a/..", "../a", "a/b/c", "/a", "a/", "a b", "é", "a//b", "a\\b",
        ] {
            assert_eq!(check_name(bad).unwrap_err().reason(), "bad-name", "{bad:?}");
        }
    }

    #[test]
    fn tar_paths() {
        assert_eq!(tar_components("./a/b").unwrap(), ["a", "b"]);
        assert_eq!(tar_components("./").unwrap(), Vec::<String>::new());
        assert_eq!(
            tar_components("bundle/anchors/").unwrap(),
            ["bundle", "anchors"]
        );
        assert!(tar_components("/etc/passwd").is_err());
        assert!(tar_components("a/../b").is_err());
        assert!(tar_components("../b").is_err());
    }

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn tar_top_level_stripped() {
        let t = tar_of(&[
            ("bundle/policy.toml", b"x"),
            ("bundle/anchors/open.nft", b"y"),
        ]);
        let f = read_bytes(&t).unwrap();
        assert_eq!(
            f.names().collect::<Vec<_>>(),
            ["anchors/open.nft", "policy.toml"]
        );
        let t = tar_of(&[("./policy.toml", b"x"), ("./anchors/open.nft", b"y")]);
        let f = read_bytes(&t).unwrap();
        assert_eq!(f.get("policy.toml"), Some(&b"x"[..]));
    }

    #[test]
    fn pax_global_header_ignored() {
        let mut b = tar::Builder::new(Vec::new());
        let comment = b"52 comment=0123456789012345678901234567890123456789\n";
        let mut h = tar::Header::new_ustar();
        h.set_size(comment.len() as u64);
        h.set_entry_type(tar::EntryType::XGlobalHeader);
        b.append_data(&mut h, "pax_global_header", &comment[..])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(1);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "policy.toml", &b"x"[..]).unwrap();
        let f = read_bytes(&b.into_inner().unwrap()).unwrap();
        assert_eq!(f.names().collect::<Vec<_>>(), ["policy.toml"]);
    }

    #[test]
    fn tar_duplicates_and_limits() {
        let t = tar_of(&[("a", b"x"), ("./a", b"y")]);
        assert_eq!(read_bytes(&t).unwrap_err().reason(), "bad-name");
        let t = tar_of(&[("anchors", b"x"), ("anchors/open.nft", b"y")]);
        let e = read_bytes(&t).unwrap_err();
        assert_eq!(e.reason(), "bad-name");
        assert!(e.to_string().contains("both a file and a directory"), "{e}");
        // The same names handed over as files (the fuzz target's model).
        let map = BTreeMap::from([
            ("anchors".to_string(), b"x".to_vec()),
            ("anchors/anchors".to_string(), Vec::new()),
        ]);
        assert_eq!(Files::from_map(map).unwrap_err().reason(), "bad-name");
        let names: Vec<String> = (0..=MAX_FILES).map(|i| format!("f{i}")).collect();
        let ents: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
        assert_eq!(
            read_bytes(&tar_of(&ents)).unwrap_err().reason(),
            "too-large"
        );
    }

    /// The tar crate reads a pax `size` record over the header's size
    /// field: the limits count what is read.
    #[test]
    fn pax_sizes_count_against_the_total() {
        let mut b = tar::Builder::new(Vec::new());
        let data = vec![b'x'; MAX_FILE_SIZE as usize];
        for i in 0..5u64 {
            let len = if i < 4 { data.len() } else { 64 << 10 };
            let record = format!("size={len}\n");
            let record = format!("{} {record}", record.len() + 3);
            assert_eq!(Ok(record.len()), record.split(' ').next().unwrap().parse());
            let mut h = tar::Header::new_ustar();
            h.set_size(record.len() as u64);
            h.set_entry_type(tar::EntryType::XHeader);
            b.append_data(&mut h, format!("PaxHeaders/f{i}"), record.as_bytes())
                .unwrap();
            let mut h = tar::Header::new_ustar();
            h.set_size(0);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, format!("f{i}"), &data[..len])
                .unwrap();
        }
        let t = b.into_inner().unwrap();
        assert!(t.len() as u64 <= MAX_TOTAL_SIZE + MAX_TAR_OVERHEAD);
        let e = read_bytes(&t).unwrap_err();
        assert_eq!(e.reason(), "too-large", "{e}");
        assert!(e.to_string().contains("total"), "{e}");
    }

    #[test]
    fn gzip_bomb_is_too_large() {
        use flate2::{Compression, write::GzEncoder};
        use std::io::Write;
        // 8 files of 1 MiB zeros: each within the per-file limit, 8 MiB in all.
        let zeros = vec![0u8; MAX_FILE_SIZE as usize];
        let names: Vec<String> = (0..8).map(|i| format!("f{i}")).collect();
        let ents: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &zeros[..])).collect();
        let mut gz = GzEncoder::new(Vec::new(), Compression::best());
        gz.write_all(&tar_of(&ents)).unwrap();
        let bytes = gz.finish().unwrap();
        assert!(bytes.len() < 100_000);
        assert_eq!(read_bytes(&bytes).unwrap_err().reason(), "too-large");
    }

    #[test]
    fn garbage_is_unreadable() {
        let r = read_bytes(&[0x1f, 0x8b, 1, 2, 3]).unwrap_err();
        assert_eq!(r.reason(), "unreadable", "{r}");
    }
}
