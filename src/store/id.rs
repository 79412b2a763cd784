//! Object ids and types: what names an object and what kind it is (DESIGN.md §4). A leaf
//! of the crate: it imports nothing of it, so every layer — packs, the object store, refs,
//! the formats that link objects — can name objects without a circle.

use std::fmt;
use std::str::FromStr;

/// Text that names no object id or object type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not an object id.
    #[error("{text:?} is not an object id (64 hex digits) or a prefix of at least 4")]
    BadId {
        /// The text given.
        text: String,
    },
    /// Not an object type's name.
    #[error("unknown object type {name:?} (known: blob, batch, log, dlq, item, checkpoint, items)")]
    BadType {
        /// The name given.
        name: String,
    },
}

/// A BLAKE3 object id, shown as 64 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId([u8; 32]);

impl ObjectId {
    /// The all-zero id, which names no object; reflogs use it for "no value".
    pub const ZERO: ObjectId = ObjectId([0; 32]);

    /// The id of an object with this type and payload.
    pub fn hash(kind: ObjectType, payload: &[u8]) -> ObjectId {
        let mut hasher = blake3::Hasher::new();
        hasher.update(header(kind, payload.len()).as_bytes());
        hasher.update(payload);
        ObjectId(*hasher.finalize().as_bytes())
    }

    /// The raw 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> ObjectId {
        ObjectId(bytes)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64-digit hex form.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }

    /// True for [`ObjectId::ZERO`].
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(blake3::Hash::from_bytes(self.0).to_hex().as_str())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({self})")
    }
}

impl FromStr for ObjectId {
    type Err = IdError;

    /// Parses exactly 64 lower-case hex digits.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(IdError::BadId { text: s.to_owned() });
        }
        blake3::Hash::from_hex(s)
            .map(|h| ObjectId(*h.as_bytes()))
            .map_err(|_| IdError::BadId { text: s.to_owned() })
    }
}

impl serde::Serialize for ObjectId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ObjectId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The type of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectType {
    /// Arbitrary bytes.
    Blob,
    /// An event batch: JSON Lines.
    Batch,
    /// An event-log node (JSON).
    Log,
    /// A dead-letter-queue snapshot (JSON).
    Dlq,
    /// One dead-lettered item (JSON).
    Item,
    /// A job checkpoint (JSON).
    Checkpoint,
    /// A job's work-item list (JSON).
    Items,
}

impl ObjectType {
    /// Every type, in the order of DESIGN.md §4.
    pub const ALL: [ObjectType; 7] = [
        ObjectType::Blob,
        ObjectType::Batch,
        ObjectType::Log,
        ObjectType::Dlq,
        ObjectType::Item,
        ObjectType::Checkpoint,
        ObjectType::Items,
    ];

    /// The name written in the canonical header.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectType::Blob => "blob",
            ObjectType::Batch => "batch",
            ObjectType::Log => "log",
            ObjectType::Dlq => "dlq",
            ObjectType::Item => "item",
            ObjectType::Checkpoint => "checkpoint",
            ObjectType::Items => "items",
        }
    }
}

impl fmt::Display for ObjectType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ObjectType {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ObjectType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| IdError::BadType { name: s.to_owned() })
    }
}

pub(crate) fn header(kind: ObjectType, len: usize) -> String {
    format!("{} {}\0", kind.as_str(), len)
}
