//! The folder a multi-run command (`train-gpu sweep`, `train-gpu sensitivity`) writes its own
//! fixed files into, locked by the process while the value lives, as a run folder is (see
//! [`crate::train::rundir`]).

use crate::fsio::{FolderLock, LOCK_FILE, remove_stale_temps};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// What a command keeps in its folder.
#[derive(Clone, Copy, Debug)]
pub struct Owned<'a> {
    /// The command, as messages name it ("a sweep").
    pub who: &'a str,
    /// The folder it may reuse, as messages name it ("an earlier sweep's").
    pub earlier: &'a str,
    /// The files it writes.
    pub files: &'a [&'a str],
    /// Whether folders (its sub-runs) may sit beside them.
    pub subfolders: bool,
}

#[derive(Debug)]
pub struct OutDir {
    pub path: PathBuf,
    _lock: FolderLock,
}

impl OutDir {
    /// Creates (if missing) and locks the folder, and removes the stale temporary files of
    /// the command's own files. It runs in a missing or empty folder or in an earlier run's
    /// of the same command; any other file there is refused, named, unless `force` (then
    /// it is kept: the command only ever writes its own files). A folder or link bearing
    /// one of its files' names is refused whatever the flags.
    pub fn open(path: &Path, force: bool, owned: Owned) -> Result<Self> {
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        let lock = FolderLock::acquire(path)?;
        remove_stale_temps(path, owned.files)?;
        let mut others = Vec::new();
        for entry in
            std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))?
        {
            let entry = entry.with_context(|| format!("reading {}", path.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let kind = entry
                .file_type()
                .with_context(|| format!("reading {}", entry.path().display()))?;
            if owned.files.contains(&name.as_str()) {
                if !kind.is_file() {
                    bail!(
                        "{} is not a regular file, where {} writes one of its own: move it away",
                        entry.path().display(),
                        owned.who
                    );
                }
            } else if name != LOCK_FILE && !(owned.subfolders && kind.is_dir()) {
                others.push(name);
            }
        }
        others.sort();
        if !others.is_empty() && !force {
            bail!(
                "{} holds files {} does not write ({}): give a missing or empty folder or \
                 {}, or add --force to write beside them (they are kept)",
                path.display(),
                owned.who,
                others.join(", "),
                owned.earlier
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}
