//! The remote store's client in a build without the `s3` feature: a `Remote` that cannot
//! exist. Opening one is refused by name, so every caller compiles unchanged and no
//! `s3://` store is ever used by mistake.

use std::sync::Arc;

use super::{Listed, Outcome, Put, RemoteError, StoreUrl, Version};

/// No remote store in this build.
#[derive(Debug)]
pub enum Remote {}

fn unsupported(url: &str) -> RemoteError {
    RemoteError::Config {
        url: url.to_owned(),
        reason: "this prodigy was built without S3 support (the `s3` feature)".into(),
    }
}

impl Remote {
    /// Refuses: this build has no S3 client.
    pub fn open(url: &str) -> Result<Remote, RemoteError> {
        Err(unsupported(url))
    }

    /// The store's address.
    pub fn url(&self) -> &StoreUrl {
        match *self {}
    }

    /// The `s3://` address of a key.
    pub fn address(&self, _key: &str) -> String {
        match *self {}
    }

    /// Checks that the store can be reached.
    pub fn check(&self) -> Result<(), RemoteError> {
        match *self {}
    }

    /// Checks that the server honours conditional writes.
    pub fn check_conditional(&self) -> Result<(), RemoteError> {
        match *self {}
    }

    /// Reads a key; `None` when it does not exist.
    pub fn get(&self, _key: &str) -> Result<Option<(Vec<u8>, Version)>, RemoteError> {
        match *self {}
    }

    /// Reads many keys at once; `None` for those that do not exist. In the order given.
    pub fn get_many(&self, _keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, RemoteError> {
        match *self {}
    }

    /// Whether a key exists.
    pub fn exists(&self, _key: &str) -> Result<bool, RemoteError> {
        match *self {}
    }

    /// A conditional write.
    pub fn put(&self, _key: &str, _bytes: Vec<u8>, _mode: Put) -> Result<Outcome, RemoteError> {
        match *self {}
    }

    /// Creates many keys at once; existing keys are left as they are.
    pub fn create_many(&self, _items: &[(String, &[u8])]) -> Result<(), RemoteError> {
        match *self {}
    }

    /// Every key under `dir` (`objects/`, `refs/events/`…), sorted.
    pub fn list(&self, _dir: &str) -> Result<Vec<Listed>, RemoteError> {
        match *self {}
    }

    /// Deletes a key (no error when it is already gone).
    pub fn delete(&self, _key: &str) -> Result<(), RemoteError> {
        match *self {}
    }

    /// Deletes many keys.
    pub fn delete_many(&self, _keys: &[String]) -> Result<(), RemoteError> {
        match *self {}
    }

    /// Notes that an object is stored remotely.
    pub fn confirm(&self, _id: [u8; 32]) {
        match *self {}
    }

    /// Whether this process has seen the object stored remotely.
    pub fn is_confirmed(&self, _id: &[u8; 32]) -> bool {
        match *self {}
    }
}

/// Refuses: this build has no S3 client.
pub fn shared(url: &str) -> Result<Arc<Remote>, RemoteError> {
    Err(unsupported(url))
}
