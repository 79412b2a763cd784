//! What gc and fsck see of a store: the one place where their work differs by backend.
//!
//! A home's store is files (loose objects, packs, temp files under `objects/tmp/`), which
//! gc packs and fsck reads under the home's locks. A bucket's store is keys, which gc and
//! fsck list, fetch and delete through [`Bucket`]: objects named by id, refs and reflogs
//! by name, every finding by its `s3://` address. Neither ever sees the client or a key.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::keys;
use super::object::{Object, ObjectError, ObjectId, decode};
use super::refs::{RefError, RefName, RefStore, Reflog};
use super::s3::Remote;

/// How gc and fsck reach a store.
pub enum Collection<'a> {
    /// The home's files, read and rewritten in place under the home's locks.
    Files,
    /// A bucket's keys.
    Bucket(Bucket<'a>),
}

/// A bucket's objects, refs and reflogs, as gc and fsck list, check and remove them.
pub struct Bucket<'a> {
    remote: &'a Arc<Remote>,
    refs: &'a RefStore,
}

/// A stored object key, as the bucket lists it.
pub struct Stored {
    /// The object it holds; `None` for a key under `objects/` that names no object.
    pub id: Option<ObjectId>,
    /// Its `s3://` address.
    pub address: PathBuf,
    /// Its size.
    pub size: u64,
    /// When it was written (the server's clock).
    pub modified: SystemTime,
}

/// A key left by the conditional-write check of a process that was killed.
pub struct Probe(String);

/// An object fetched from a bucket: its address, and what was read (`None` when the key
/// was deleted since it was listed).
pub type Fetched = (PathBuf, Option<Result<Object, ObjectError>>);

/// A ref key as listed: its name, or the address of a key that names no ref.
pub type ListedRef = Result<RefName, PathBuf>;

impl<'a> Collection<'a> {
    /// How gc and fsck reach the store of `refs`.
    pub fn of(refs: &'a RefStore) -> Result<Collection<'a>, RefError> {
        Ok(match refs.objects().s3()? {
            None => Collection::Files,
            Some(remote) => Collection::Bucket(Bucket { remote, refs }),
        })
    }
}

impl Bucket<'_> {
    /// Every object key, in listing order.
    pub fn objects(&self) -> Result<Vec<Stored>, ObjectError> {
        Ok(self
            .remote
            .list(keys::OBJECTS)?
            .into_iter()
            .map(|l| Stored {
                id: keys::parse_object(&l.key),
                address: self.address(&l.key),
                size: l.size,
                modified: l.modified,
            })
            .collect())
    }

    /// Reads `ids` from the bucket itself (not the cache), many at once, verifying each;
    /// `None` for an object deleted since it was listed.
    pub fn fetch(&self, ids: &[ObjectId]) -> Result<Vec<Fetched>, ObjectError> {
        let names: Vec<String> = ids.iter().map(keys::object).collect();
        let bodies = self.remote.get_many(&names)?;
        Ok(ids
            .iter()
            .zip(&names)
            .zip(bodies)
            .map(|((id, key), body)| {
                let address = self.address(key);
                let read = body.map(|bytes| decode(id, &address, &bytes));
                (address, read)
            })
            .collect())
    }

    /// The probe keys older than `age`.
    pub fn stale_probes(&self, age: Duration) -> Result<Vec<Probe>, ObjectError> {
        let now = SystemTime::now();
        Ok(self
            .remote
            .list(keys::PROBES)?
            .into_iter()
            .filter(|p| now.duration_since(p.modified).unwrap_or_default() >= age)
            .map(|p| Probe(p.key))
            .collect())
    }

    /// Deletes objects and probes, many at once.
    pub fn remove(&self, objects: &[ObjectId], probes: Vec<Probe>) -> Result<(), ObjectError> {
        let doomed: Vec<String> = objects
            .iter()
            .map(keys::object)
            .chain(probes.into_iter().map(|p| p.0))
            .collect();
        Ok(self.remote.delete_many(&doomed)?)
    }

    /// Every ref key.
    pub fn refs(&self) -> Result<Vec<ListedRef>, RefError> {
        Ok(self
            .remote
            .list(keys::REFS)?
            .into_iter()
            .map(|l| {
                keys::parse_ref(&l.key)
                    .and_then(|rest| RefName::from_key_path(rest).ok())
                    .ok_or_else(|| self.address(&l.key))
            })
            .collect())
    }

    /// Every ref name with a reflog (deleted refs too).
    pub fn logged(&self) -> Result<Vec<RefName>, RefError> {
        self.refs.bucket_logged_names(self.remote)
    }

    /// Deletes the reflog entries of `name` older than `cutoff_ms` (none on a dry run);
    /// returns what is left and how many went.
    pub fn expire_reflog(
        &self,
        name: &RefName,
        cutoff_ms: u64,
        dry_run: bool,
    ) -> Result<(Reflog, usize), RefError> {
        self.refs
            .expire_bucket_reflog(self.remote, name, cutoff_ms, dry_run)
    }

    /// The address of a ref.
    pub fn ref_address(&self, name: &RefName) -> PathBuf {
        self.address(&keys::ref_key(&name.key_path()))
    }

    /// The address of a ref's reflog.
    pub fn log_address(&self, name: &RefName) -> PathBuf {
        self.address(&keys::log_dir(&name.key_path()))
    }

    fn address(&self, key: &str) -> PathBuf {
        PathBuf::from(self.remote.address(key))
    }
}
