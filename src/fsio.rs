//! Every file the program writes or reads goes through here, so that the rules hold in one
//! place:
//!
//! - writes are atomic: a uniquely named temporary file, created exclusively (never through
//!   a link someone placed) in the target's folder, synced, renamed over the target, and
//!   the folder synced; a crash leaves the old file or the new one, never half of one;
//! - reads take regular files only, up to a bound: a FIFO, a device or a folder is refused
//!   before anything blocks or fills memory;
//! - a folder a process works in is held with an OS lock, which the kernel releases when
//!   the process dies, so a second process is refused instead of interleaving its writes;
//! - a temporary file a killed writer left behind is recognised by its name and removed by
//!   the next process that locks the folder, and nothing else is ever removed.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// The lock file inside a folder held by [`FolderLock`].
pub const LOCK_FILE: &str = ".microunify.lock";

/// Suffix of every temporary file [`write_atomic`] creates.
const TEMP_SUFFIX: &str = ".tmp";

fn io_err(path: &Path, reason: io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        reason,
    }
}

fn invalid(path: &Path, why: String) -> Error {
    io_err(path, io::Error::new(io::ErrorKind::InvalidInput, why))
}

/// The folder a path's file lives in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Writes `bytes` to `path` atomically (see the module's rules).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Like [`write_atomic`], with the content produced by `fill` writing into the temporary
/// file. An error from `fill` (or anywhere before the rename) removes the temporary file
/// and leaves `path` as it was.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<()> {
    if path.is_dir() {
        return Err(invalid(path, "is a folder, not a file".into()));
    }
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| invalid(path, "has no file name".into()))?;
    let prefix = format!(".{name}.{}.", std::process::id());
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(TEMP_SUFFIX).rand_bytes(6);
    // The default mode of a created file (umask applies), not tempfile's private 0600:
    // the result is an ordinary output file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder.tempfile_in(dir).map_err(|e| io_err(dir, e))?;
    fill(tmp.as_file_mut())
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| io_err(tmp.path(), e))?;
    kill_point(&format!("write:{name}"));
    tmp.persist(path).map_err(|e| io_err(path, e.error))?;
    // The rename is durable once the folder is synced. Some platforms cannot open a
    // folder for that; the data itself is already safe, so this is best effort.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Checks, before any long work, that `path` can later be written by [`write_atomic`]:
/// its folder exists and takes new files, and `path` itself is not a folder.
pub fn check_writable(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(invalid(path, "is a folder, not a file".into()));
    }
    let dir = parent_dir(path);
    if !dir.is_dir() {
        return Err(invalid(
            path,
            format!("its folder {} does not exist", dir.display()),
        ));
    }
    // The only reliable test of "may I create a file here" is creating one.
    tempfile::Builder::new()
        .prefix(".microunify-probe.")
        .suffix(TEMP_SUFFIX)
        .tempfile_in(dir)
        .map(drop)
        .map_err(|e| io_err(dir, e))
}

/// Opens a file for reading without blocking on it: a FIFO opened for reading would wait
/// for a writer, so it is opened non-blocking and refused once it shows what it is.
fn open_nonblocking(path: &Path) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    options.open(path)
}

/// Reads the whole regular file at `path`, refusing anything else (a folder, FIFO, socket
/// or device) and any file longer than `max_bytes`; `what` names the file's role in errors.
pub fn read_regular(path: &Path, max_bytes: u64, what: &str) -> Result<Vec<u8>> {
    let file = open_regular(path, what)?;
    let len = file.metadata().map_err(|e| io_err(path, e))?.len();
    if len > max_bytes {
        return Err(too_long(path, what, len, max_bytes));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // A file that grows while it is read is still bounded.
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| io_err(path, e))?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_long(path, what, bytes.len() as u64, max_bytes));
    }
    Ok(bytes)
}

/// Opens `path` for reading if it is a regular file (a link to one counts).
pub fn open_regular(path: &Path, what: &str) -> Result<File> {
    let file = open_nonblocking(path).map_err(|e| io_err(path, e))?;
    let kind = file.metadata().map_err(|e| io_err(path, e))?.file_type();
    if !kind.is_file() {
        let is = if kind.is_dir() {
            "a folder"
        } else {
            "not a regular file (a pipe, socket or device)"
        };
        return Err(invalid(
            path,
            format!("is {is}; expected the {what} as a file"),
        ));
    }
    Ok(file)
}

fn too_long(path: &Path, what: &str, len: u64, max: u64) -> Error {
    invalid(
        path,
        format!("is {len} bytes, more than the {max} a {what} may have"),
    )
}

/// An exclusive OS lock on a folder, held while this value lives (and released by the
/// kernel if the process dies). The lock file stays in the folder: removing it would let a
/// second process lock a new file while a third still holds the old one.
#[derive(Debug)]
pub struct FolderLock {
    _file: File,
    dir: PathBuf,
}

impl FolderLock {
    /// Locks `dir` (which must exist), or explains who holds it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let by = if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (process {holder})")
                };
                return Err(Error::Locked {
                    path: dir.display().to_string(),
                    by,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&path, e)),
        }
        // The holder's pid, for the message a refused process prints.
        let _ = file
            .set_len(0)
            .and_then(|()| write!(file, "{}", std::process::id()));
        Ok(Self {
            _file: file,
            dir: dir.to_path_buf(),
        })
    }

    /// The locked folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// True for the name of a temporary file [`write_atomic`] made for one of `names`
/// (`.NAME.PID.RANDOM.tmp`, or `.NAME.PID.tmp` from earlier versions).
pub fn is_temp_of(file_name: &str, names: &[&str]) -> bool {
    let Some(rest) = file_name
        .strip_prefix('.')
        .and_then(|r| r.strip_suffix(TEMP_SUFFIX))
    else {
        return false;
    };
    names.iter().any(|n| {
        rest.strip_prefix(n)
            .and_then(|r| r.strip_prefix('.'))
            .is_some_and(|mid| {
                let mut parts = mid.split('.');
                let pid = parts.next().unwrap_or("");
                let random = parts.next();
                parts.next().is_none()
                    && !pid.is_empty()
                    && pid.bytes().all(|b| b.is_ascii_digit())
                    && random.is_none_or(|r| {
                        !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric())
                    })
            })
    })
}

/// Removes the temporary files that writers of `names` left in `dir` (regular files only;
/// links and everything else stay). Call it holding the folder's [`FolderLock`], so that no
/// live writer's file is taken. Returns what was removed.
pub fn remove_stale_temps(dir: &Path, names: &[&str]) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && is_temp_of(&name, names) {
            let p = entry.path();
            std::fs::remove_file(&p).map_err(|e| io_err(&p, e))?;
            removed.push(p);
        }
    }
    Ok(removed)
}

/// The environment variable that names a [`kill_point`].
pub const KILL_AT_ENV: &str = "MICROUNIFY_KILL_AT";

/// A place where a crash test may kill this process. When `MICROUNIFY_KILL_AT` is `name`,
/// or `name:N` (the N-th time this process reaches the point, counted from 1), the process
/// sends itself SIGKILL here: no destructor, no flush, as `kill -9` or a power cut would
/// leave it. Elsewhere than on unix it does nothing. The variable is read at every call,
/// so each process (and each test) sets its own.
///
/// The points:
/// - `write:FILE`: in [`write_atomic_with`], once the temporary file for `FILE` (a file
///   name: `checkpoint.safetensors`, `compressed.safetensors`, `final.ot`, `dense.ot`,
///   `report.json`, ...) is written and synced, before it is renamed over `FILE`;
/// - `epoch:dense`, `epoch:admm`, `epoch:retrain`: at the end of each training epoch of
///   that phase (trained and recorded, before any checkpoint that follows it);
/// - `round`: after each ADMM round's Z/U projection, before the round's checkpoint.
pub fn kill_point(name: &str) {
    let Some(want) = std::env::var_os(KILL_AT_ENV) else {
        return;
    };
    let want = want.to_string_lossy();
    let (point, nth) = match want.rsplit_once(':') {
        Some((p, n)) if n.parse::<u64>().is_ok() => (p, n.parse::<u64>().unwrap_or(1)),
        _ => (&*want, 1),
    };
    if point != name {
        return;
    }
    static REACHED: std::sync::Mutex<Vec<(String, u64)>> = std::sync::Mutex::new(Vec::new());
    let count = {
        let mut reached = REACHED.lock().unwrap_or_else(|e| e.into_inner());
        let i = match reached.iter().position(|(p, _)| p == name) {
            Some(i) => i,
            None => {
                reached.push((name.to_string(), 0));
                reached.len() - 1
            }
        };
        reached[i].1 += 1;
        reached[i].1
    };
    if count == nth {
        #[cfg(unix)]
        // SAFETY: kill(2) on our own pid; no memory is involved.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_recognised_only_for_our_files() {
        let names = ["checkpoint.safetensors", "report.json"];
        assert!(is_temp_of(".checkpoint.safetensors.123.tmp", &names));
        assert!(is_temp_of(".checkpoint.safetensors.123.aZ09xy.tmp", &names));
        assert!(is_temp_of(".report.json.7.abcdef.tmp", &names));
        for other in [
            "checkpoint.safetensors.tmp",
            ".checkpoint.safetensors.tmp",
            ".checkpoint.safetensors.12a.tmp",
            ".checkpoint.safetensors.1.2.3.tmp",
            ".notes.txt.123.tmp",
            ".checkpoint.safetensors.123.tmp.bak",
            ".report.json..tmp",
        ] {
            assert!(!is_temp_of(other, &names), "{other}");
        }
    }

    #[test]
    fn atomic_write_creates_a_fresh_file_and_never_follows_a_planted_link() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        write_atomic(&target, b"one").unwrap();
        write_atomic(&target, b"two").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"two");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "only the target remains");
        #[cfg(unix)]
        {
            let victim = dir.path().join("victim");
            std::fs::write(&victim, b"precious").unwrap();
            let planted = format!(".out.bin.{}.tmp", std::process::id());
            std::os::unix::fs::symlink(&victim, dir.path().join(planted)).unwrap();
            std::os::unix::fs::symlink(&victim, dir.path().join("out.bin.tmp")).unwrap();
            write_atomic(&target, b"three").unwrap();
            assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
            assert!(!std::fs::symlink_metadata(&target).unwrap().is_symlink());
        }
    }

    #[test]
    fn a_failed_fill_leaves_the_old_file_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a");
        write_atomic(&target, b"old").unwrap();
        let err = write_atomic_with(&target, |_| Err(io::Error::other("disk on fire")));
        assert!(err.unwrap_err().to_string().contains("disk on fire"));
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn reads_refuse_folders_pipes_and_oversized_files() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_regular(dir.path(), 10, "test file")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a folder"), "{e}");
        let f = dir.path().join("f");
        std::fs::write(&f, [0u8; 11]).unwrap();
        let e = read_regular(&f, 10, "test file").unwrap_err().to_string();
        assert!(e.contains("11 bytes, more than the 10"), "{e}");
        assert_eq!(read_regular(&f, 11, "test file").unwrap().len(), 11);
        assert_eq!(read_regular(&f, u64::MAX, "test file").unwrap().len(), 11);
        #[cfg(unix)]
        {
            let e = read_regular(Path::new("/dev/zero"), 10, "test file")
                .unwrap_err()
                .to_string();
            assert!(e.contains("not a regular file"), "{e}");
            let fifo = dir.path().join("fifo");
            let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            let e = read_regular(&fifo, 10, "test file")
                .unwrap_err()
                .to_string();
            assert!(e.contains("not a regular file"), "{e}");
        }
    }

    #[test]
    fn a_locked_folder_refuses_a_second_holder_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let first = FolderLock::acquire(dir.path()).unwrap();
        let e = FolderLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(e.contains("in use by another process"), "{e}");
        assert!(e.contains(&std::process::id().to_string()), "{e}");
        drop(first);
        FolderLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn stale_temps_of_our_files_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in [
            ".checkpoint.safetensors.99.tmp",
            ".report.json.98.AbC123.tmp",
            "notes.txt",
            ".notes.txt.97.tmp",
            "report.json",
        ] {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        let mut removed =
            remove_stale_temps(d, &["checkpoint.safetensors", "report.json"]).unwrap();
        removed.sort();
        assert_eq!(
            removed,
            vec![
                d.join(".checkpoint.safetensors.99.tmp"),
                d.join(".report.json.98.AbC123.tmp")
            ]
        );
        let mut left: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [".notes.txt.97.tmp", "notes.txt", "report.json"]);
    }

    #[test]
    fn check_writable_names_missing_folders_and_folder_targets() {
        let dir = tempfile::tempdir().unwrap();
        check_writable(&dir.path().join("new.bin")).unwrap();
        let e = check_writable(&dir.path().join("no/such/x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        let e = check_writable(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is a folder"), "{e}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the probe is gone"
        );
    }
}
