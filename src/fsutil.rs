//! The one way prodigy writes files: temp file, fsync, rename, fsync the directory.
//!
//! Objects, refs, repo records and everything else go through [`write_atomic`] (one file,
//! durable on return) or [`write_temp`] + [`sync_filesystem`] + rename (many files, one
//! durability barrier). Paths inside the home are never followed through symlinks.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// An I/O failure, naming the operation and the path.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} '{}'", path.display())]
pub struct FsError {
    /// What was being done: "read", "create directory", "rename to", ….
    pub op: &'static str,
    /// The path it was done to.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

impl crate::hint::Hint for FsError {
    fn hint(&self) -> Option<&'static str> {
        crate::hint::of_io(&self.source)
    }
}

impl FsError {
    /// Wraps `source` with the operation and path. `tempfile` wraps the OS error with a
    /// path of its own ("… (os error 28) at path …", the inner error out of reach); that
    /// is taken back to the OS error, so the message names one path.
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let source = match source.raw_os_error() {
            Some(_) => source,
            None => without_path(source),
        };
        FsError {
            op,
            path: path.into(),
            source,
        }
    }
}

fn without_path(e: io::Error) -> io::Error {
    let text = e.to_string();
    let Some(cut) = text.find(" at path \"") else {
        return e;
    };
    let head = &text[..cut];
    let code = head
        .strip_suffix(')')
        .and_then(|h| h.rsplit_once("(os error "))
        .and_then(|(_, n)| n.parse::<i32>().ok());
    match code {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), head.to_owned()),
    }
}

impl FsError {
    /// True when the file system is mounted read-only (EROFS).
    pub fn is_read_only(&self) -> bool {
        self.source.raw_os_error() == Some(rustix::io::Errno::ROFS.raw_os_error())
    }
}

/// Adds an operation and a path to an `io::Result`.
pub trait IoContext<T> {
    /// Maps the error to an [`FsError`] naming `op` and `path`.
    fn at(self, op: &'static str, path: &Path) -> Result<T, FsError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, op: &'static str, path: &Path) -> Result<T, FsError> {
        self.map_err(|e| FsError::new(op, path, e))
    }
}

/// `O_NOFOLLOW`: opening a symlink fails with `ELOOP` instead of following it.
fn nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// True when an error means "the last path component is a symlink" (`ELOOP` under
/// `O_NOFOLLOW`).
pub fn is_symlink_refusal(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
}

/// Opens a file for reading without following a symlink in its last component, and
/// without waiting: a FIFO planted where a file should be opens at once (and is refused
/// by [`read_nofollow`]) instead of blocking its reader until something writes to it.
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(nofollow() | rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
}

/// Reads a whole file without following a symlink in its last component. Anything but a
/// regular file or a directory (a FIFO, a socket, a device) is refused: the store never
/// makes one, and reading it could block or never end.
pub fn read_nofollow(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = open_nofollow(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() && !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, socket or device)",
        ));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut buf)?;
    Ok(buf)
}

/// The most bytes a text file read whole takes: a workflow, a `--param-file`, an env
/// file, a secret. Far past any real one; it keeps `/dev/zero` or a runaway file from
/// filling memory.
pub const MAX_TEXT_FILE: u64 = 64 << 20;

/// Reads `reader` to its end into `buf`, refusing (with `FileTooLarge`, `buf` as it was)
/// more than `limit` bytes: an input that never ends, such as `/dev/zero`, stops there.
pub fn read_to_end_limited(reader: impl Read, limit: u64, buf: &mut Vec<u8>) -> io::Result<()> {
    let start = buf.len();
    reader.take(limit.saturating_add(1)).read_to_end(buf)?;
    if (buf.len() - start) as u64 > limit {
        buf.truncate(start);
        return Err(too_large(limit));
    }
    Ok(())
}

fn too_large(limit: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        format!("larger than {limit} bytes, the most it may hold"),
    )
}

/// Reads a whole file of at most `limit` bytes (see [`read_to_end_limited`]); a regular
/// file past it is refused before reading.
pub fn read_limited(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let mut buf = Vec::new();
    if let Ok(meta) = file.metadata()
        && meta.is_file()
    {
        if meta.len() > limit {
            return Err(too_large(limit));
        }
        buf.reserve(meta.len() as usize);
    }
    read_to_end_limited(file, limit, &mut buf)?;
    Ok(buf)
}

/// [`read_limited`] of a UTF-8 text file of at most [`MAX_TEXT_FILE`] bytes.
pub fn read_text(path: &Path) -> io::Result<String> {
    String::from_utf8(read_limited(path, MAX_TEXT_FILE)?).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
}

/// Opens (creating if needed) a file for appending, never through a symlink.
pub fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .custom_flags(nofollow())
        .mode(0o644)
        .open(path)
}

/// True in a build made to lose data (`--features broken-durability`): every fsync,
/// fdatasync and syncfs is skipped, so that the power-cut tests can show they catch a
/// store that does not make its writes durable. Never in a real build.
pub const BROKEN_DURABILITY: bool = cfg!(feature = "broken-durability");

/// Fsyncs a file (`data_only`: fdatasync) — the one place files are made durable.
pub fn sync_file(
    file: &File,
    data_only: bool,
    op: &'static str,
    path: &Path,
) -> Result<(), FsError> {
    if BROKEN_DURABILITY {
        return Ok(());
    }
    let result = if data_only {
        file.sync_data()
    } else {
        file.sync_all()
    };
    result.at(op, path)
}

/// Fsyncs a directory so that renames and creations inside it survive a power cut.
pub fn sync_dir(dir: &Path) -> Result<(), FsError> {
    let d = File::open(dir).at("fsync directory", dir)?;
    sync_file(&d, false, "fsync directory", dir)
}

/// Flushes everything written on the file system holding `path` (Linux `syncfs`), the
/// barrier behind batched writes. Elsewhere it fsyncs `path` only, and callers fsync each
/// file themselves (see [`BATCH_BARRIER_IS_FILESYSTEM_WIDE`]).
pub fn sync_filesystem(path: &Path) -> Result<(), FsError> {
    let dir = File::open(path).at("open for syncfs", path)?;
    if BROKEN_DURABILITY {
        return Ok(());
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        rustix::fs::syncfs(&dir)
            .map_err(io::Error::from)
            .at("syncfs", path)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        sync_file(&dir, false, "fsync directory", path)
    }
}

/// Whether [`sync_filesystem`] covers every file and directory on the file system.
pub const BATCH_BARRIER_IS_FILESYSTEM_WIDE: bool =
    cfg!(any(target_os = "linux", target_os = "android"));

/// Makes sure `dir` exists as a real directory below `home`, creating missing components
/// and fsyncing each new one's parent. Refuses a symlink anywhere between `home` and `dir`,
/// so nothing is ever written outside the home through a planted link.
pub fn ensure_dir(home: &Path, dir: &Path) -> Result<(), FsError> {
    let rel = dir.strip_prefix(home).unwrap_or(dir);
    let mut current = home.to_path_buf();
    if !home.is_dir() {
        fs::create_dir_all(home).at("create directory", home)?;
        if let Some(parent) = home.parent() {
            sync_dir(parent)?;
        }
    }
    for component in rel.components() {
        current.push(component);
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(symlink_refused(&current));
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(FsError::new(
                    "use as a directory",
                    &current,
                    io::Error::new(io::ErrorKind::AlreadyExists, "a file is in the way"),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match fs::create_dir(&current) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(FsError::new("create directory", &current, e)),
                }
                sync_dir(current.parent().unwrap_or(home))?;
            }
            Err(e) => return Err(FsError::new("inspect", &current, e)),
        }
    }
    Ok(())
}

/// The error for a symlink found where the store expects a file or directory.
pub fn symlink_refused(path: &Path) -> FsError {
    FsError::new(
        "use",
        path,
        io::Error::new(
            io::ErrorKind::InvalidData,
            "it is a symlink, which the store never follows",
        ),
    )
}

/// A temp file that was written but not yet renamed; removed on drop unless persisted.
pub type TempPath = tempfile::TempPath;

/// Writes `bytes` to a new temp file in `tmp_dir` (named `<prefix>…​.tmp`) with `mode`.
/// When `durable`, the file is fsynced before this returns.
pub fn write_temp(
    tmp_dir: &Path,
    prefix: &str,
    bytes: &[u8],
    mode: u32,
    durable: bool,
) -> Result<TempPath, FsError> {
    let mut file = tempfile::Builder::new()
        .prefix(prefix)
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(tmp_dir)
        .at("create a temp file in", tmp_dir)?;
    let path = file.path().to_path_buf();
    file.write_all(bytes).at("write", &path)?;
    if durable {
        sync_file(file.as_file(), false, "fsync", &path)?;
    }
    Ok(file.into_temp_path())
}

/// Renames a written temp file to `target` (replacing it atomically).
pub fn rename_into_place(temp: TempPath, target: &Path) -> Result<(), FsError> {
    temp.persist(target)
        .map_err(|e| FsError::new("rename a temp file to", target, e.error))
}

/// [`write_temp`] into a directory of the home that gc may remove: gc removes the object
/// fan-out and temp directories it empties, and a writer that holds no gc guard
/// (`hash-object -w`) may find its directory gone between making it and using it. Makes
/// it again (under `home`) and tries once more.
pub fn write_temp_in(
    home: &Path,
    tmp_dir: &Path,
    prefix: &str,
    bytes: &[u8],
    mode: u32,
    durable: bool,
) -> Result<TempPath, FsError> {
    match write_temp(tmp_dir, prefix, bytes, mode, durable) {
        Err(e) if e.source.kind() == io::ErrorKind::NotFound => {
            ensure_dir(home, tmp_dir)?;
            write_temp(tmp_dir, prefix, bytes, mode, durable)
        }
        other => other,
    }
}

/// [`rename_into_place`] into a directory of the home that gc may remove (see
/// [`write_temp_in`]): makes `target`'s directory again and tries once more.
pub fn rename_into_place_in(home: &Path, temp: TempPath, target: &Path) -> Result<(), FsError> {
    let failed = |e: io::Error| FsError::new("rename a temp file to", target, e);
    match temp.persist(target) {
        Ok(()) => Ok(()),
        Err(e) if e.error.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = target.parent() {
                ensure_dir(home, dir)?;
            }
            e.path.persist(target).map_err(|e| failed(e.error))
        }
        Err(e) => Err(failed(e.error)),
    }
}

/// Atomically and durably replaces `target` with `bytes`: a temp file in `tmp_dir` (which
/// must be on the same file system, normally `target`'s own directory), fsync, rename,
/// fsync of `target`'s directory. A crash leaves the old content or the new, never a mix.
pub fn write_atomic(target: &Path, tmp_dir: &Path, bytes: &[u8], mode: u32) -> Result<(), FsError> {
    let prefix = target
        .file_name()
        .map(|n| format!("{}.", n.to_string_lossy()))
        .unwrap_or_default();
    let temp = write_temp(tmp_dir, &prefix, bytes, mode, true)?;
    rename_into_place(temp, target)?;
    sync_dir(target.parent().unwrap_or(Path::new(".")))
}

/// Durably creates `target` with `bytes` only if nothing is there yet (temp file, fsync,
/// hard link, fsync of the directory). Returns `false` when `target` already existed.
pub fn create_new_atomic(
    target: &Path,
    tmp_dir: &Path,
    bytes: &[u8],
    mode: u32,
) -> Result<bool, FsError> {
    let temp = write_temp(tmp_dir, ".new.", bytes, mode, true)?;
    match fs::hard_link(&temp, target) {
        Ok(()) => {
            drop(temp);
            sync_dir(target.parent().unwrap_or(Path::new(".")))?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(FsError::new("link a temp file to", target, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limited_read_stops_one_byte_past_its_limit() {
        let mut buf = b"kept".to_vec();
        read_to_end_limited(&b"12345"[..], 5, &mut buf).unwrap();
        assert_eq!(buf, b"kept12345");
        let e = read_to_end_limited(&b"123456"[..], 5, &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        assert_eq!(buf, b"kept12345");
        // An endless input: read no further than the limit and one byte.
        let mut endless = io::repeat(0).take(u64::MAX);
        let mut zeros = Vec::new();
        assert!(read_to_end_limited(&mut endless, 1000, &mut zeros).is_err());
        assert_eq!(endless.limit(), u64::MAX - 1001);
    }

    /// `tempfile` adds "at path …" to its errors; ours name the path once.
    #[test]
    fn an_error_names_its_path_once() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let e = tempfile::Builder::new().tempfile_in(&missing).unwrap_err();
        assert!(e.to_string().contains("at path"), "{e}");
        let ours = FsError::new("create a temp file in", &missing, e);
        let text = format!("{ours}: {}", ours.source);
        assert_eq!(text.matches("missing").count(), 1, "{text}");
        assert_eq!(ours.source.raw_os_error(), Some(2));
    }

    /// gc removes emptied object directories; a writer that finds its own gone (after
    /// making it) makes it again instead of failing.
    #[test]
    fn writers_make_a_removed_directory_again() {
        let home = tempfile::tempdir().unwrap();
        let tmp = home.path().join("objects/tmp/ab");
        let fanout = home.path().join("objects/ab");
        ensure_dir(home.path(), &tmp).unwrap();
        ensure_dir(home.path(), &fanout).unwrap();
        fs::remove_dir(&tmp).unwrap();
        fs::remove_dir(&fanout).unwrap();
        let temp = write_temp_in(home.path(), &tmp, "obj-", b"frame", 0o444, true).unwrap();
        let target = fanout.join("cdef");
        fs::remove_dir(&fanout).unwrap_or_default();
        rename_into_place_in(home.path(), temp, &target).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"frame");
        // Anything else is still an error.
        let file = home.path().join("objects/file");
        fs::write(&file, b"").unwrap();
        assert!(write_temp_in(home.path(), &file.join("x"), "obj-", b"", 0o444, false).is_err());
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("HEAD");
        write_atomic(&target, dir.path(), b"one\n", 0o644).unwrap();
        write_atomic(&target, dir.path(), b"two\n", 0o644).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two\n");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn create_new_refuses_to_replace() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("x.json");
        assert!(create_new_atomic(&target, dir.path(), b"a", 0o644).unwrap());
        assert!(!create_new_atomic(&target, dir.path(), b"b", 0o644).unwrap());
        assert_eq!(fs::read(&target).unwrap(), b"a");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn ensure_dir_refuses_symlinks() {
        let home = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), home.path().join("events")).unwrap();
        let err = ensure_dir(home.path(), &home.path().join("events/api/job")).unwrap_err();
        assert!(err.to_string().contains("events"), "{err}");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn read_nofollow_refuses_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("real"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
        let err = read_nofollow(&dir.path().join("link")).unwrap_err();
        assert!(is_symlink_refusal(&err), "{err}");
    }
}
