//! The store's home directory (`PRODIGY_HOME`, else `~/.prodigy`) and its layout.

use std::path::{Path, PathBuf};

/// The environment variable naming the home.
pub const HOME_ENV: &str = "PRODIGY_HOME";

/// Failure to find a home directory.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    /// Neither `PRODIGY_HOME` nor a user home directory is known.
    #[error("cannot find a home for the store: set PRODIGY_HOME or HOME")]
    NoHome,
    /// `PRODIGY_HOME` is a relative path: the store would move with the current directory
    /// (one per worktree), so it is refused.
    #[error("PRODIGY_HOME '{}' is a relative path: give an absolute one (the store is one for every worktree)", path.display())]
    RelativeEnv {
        /// The value.
        path: PathBuf,
    },
    /// The home belongs to another user (as git refuses a repository it does not own).
    #[error("the store '{}' belongs to user {owner}, not to you (user {me}); use your own PRODIGY_HOME", path.display())]
    NotOwner {
        /// The home.
        path: PathBuf,
        /// Its owner's uid.
        owner: u32,
        /// This process's effective uid.
        me: u32,
    },
    /// The home is a symlink to nothing: writing through it would fail at every file.
    #[error("the store '{}' is a symlink to '{}', which does not exist: create that directory, or point PRODIGY_HOME elsewhere", path.display(), target.display())]
    DanglingLink {
        /// The home.
        path: PathBuf,
        /// Where the link points.
        target: PathBuf,
    },
    /// The home, or a directory above it, is a file (or another thing that is not a
    /// directory).
    #[error("the store '{}' is not a directory: {what}; point PRODIGY_HOME (or --home) at a directory", path.display())]
    NotADirectory {
        /// The home.
        path: PathBuf,
        /// What is there instead.
        what: &'static str,
    },
    /// The current directory, needed to make a relative home absolute, is unknown.
    #[error("cannot make the home '{}' absolute", path.display())]
    Relative {
        /// The relative home.
        path: PathBuf,
        /// Why the current directory is unknown.
        #[source]
        source: std::io::Error,
    },
}

/// The root of a store and the paths inside it (see DESIGN.md §1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
    /// A remote store (`s3://bucket/prefix`) that holds the objects and refs instead of
    /// this directory, which then keeps only a cache of objects, the config and the local
    /// worktrees.
    store: Option<String>,
}

impl Home {
    /// The home at `root`, made absolute against the current directory.
    pub fn at(root: impl AsRef<Path>) -> Result<Home, HomeError> {
        let root = root.as_ref();
        let root = std::path::absolute(root).map_err(|source| HomeError::Relative {
            path: root.to_path_buf(),
            source,
        })?;
        Ok(Home { root, store: None })
    }

    /// `PRODIGY_HOME` if set and not empty, else `~/.prodigy`.
    pub fn from_env() -> Result<Home, HomeError> {
        match std::env::var_os(HOME_ENV) {
            Some(dir) if Path::new(&dir).is_relative() && !dir.is_empty() => {
                Err(HomeError::RelativeEnv { path: dir.into() })
            }
            Some(dir) if !dir.is_empty() => Home::at(dir),
            _ => Home::at(
                std::env::home_dir()
                    .ok_or(HomeError::NoHome)?
                    .join(".prodigy"),
            ),
        }
    }

    /// Refuses a home owned by another user: its refs, locks and objects are theirs to
    /// write, and a home someone else controls could point anywhere. A home that does not
    /// exist yet is fine (it will be created as this user's); a symlink to nothing is
    /// refused, saying where it points, and so is a home that is not a directory (every
    /// file under it would fail, and the first to be read named itself, not the home).
    pub fn check_owner(&self) -> Result<(), HomeError> {
        use std::os::unix::fs::MetadataExt;
        let not_a_directory = |what| HomeError::NotADirectory {
            path: self.root.clone(),
            what,
        };
        let meta = std::fs::metadata(&self.root);
        if let Err(e) = &meta
            && e.kind() == std::io::ErrorKind::NotADirectory
        {
            return Err(not_a_directory("a directory above it is a file"));
        }
        let Ok(meta) = meta else {
            if let Ok(target) = std::fs::read_link(&self.root) {
                return Err(HomeError::DanglingLink {
                    path: self.root.clone(),
                    target,
                });
            }
            return Ok(());
        };
        if !meta.is_dir() {
            return Err(not_a_directory(if meta.is_file() {
                "it is a file"
            } else {
                "it is a device, socket or pipe"
            }));
        }
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            return Err(HomeError::NotOwner {
                path: self.root.clone(),
                owner: meta.uid(),
                me,
            });
        }
        Ok(())
    }

    /// The same home with its objects and refs in `store` (`None`: in the home itself).
    pub fn with_store(mut self, store: Option<String>) -> Home {
        self.store = store.filter(|s| !s.is_empty());
        self
    }

    /// The remote store, when one is chosen.
    pub fn store(&self) -> Option<&str> {
        self.store.as_deref()
    }

    /// `cache/objects/`: objects fetched from (or written to) a remote store.
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache").join("objects")
    }

    /// The home directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `objects/`: loose objects in fan-out directories, packs, temp files.
    pub fn objects_dir(&self) -> PathBuf {
        self.root.join("objects")
    }

    /// `objects/tmp/`: where object temp files are written before their rename.
    pub fn objects_tmp_dir(&self) -> PathBuf {
        self.root.join("objects").join("tmp")
    }

    /// `repos/`: one record per repo name (see [`crate::repo`]).
    pub fn repos_dir(&self) -> PathBuf {
        self.root.join("repos")
    }

    /// `<kind>/`: the directory holding every ref of one kind.
    pub fn kind_dir(&self, kind: &str) -> PathBuf {
        self.root.join(kind)
    }
}
