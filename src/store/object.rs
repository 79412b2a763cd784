//! Content-addressed objects: `<type> <len>\0<payload>`, named by its BLAKE3 hash, stored
//! as one zstd frame at `objects/<2 hex>/<62 hex>` (DESIGN.md §4).
//!
//! Every read is verified: the frame must be exactly one zstd frame, must not expand past
//! the size it declares (nor past [`MAX_OBJECT_SIZE`]), and must hash to its name. Nothing
//! corrupt is ever returned as data.
//!
//! In an S3 store the same frames are keys ([`super::keys::object`]) and the home's
//! `cache/objects/` holds verified copies of what was read or written.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use zstd::zstd_safe::{self, CParameter, DParameter};

use super::id::header;
use super::keys;
use crate::fsutil::{self, FsError, IoContext, TempPath};
use crate::home::Home;
use crate::store::dict::Dictionary;
pub use crate::store::id::{IdError, ObjectId, ObjectType};
use crate::store::pack::{self, Pack};
use crate::store::s3::{Remote, RemoteError};

/// The largest payload an object may have (1 GiB). A frame declaring more is refused before
/// anything is allocated.
pub const MAX_OBJECT_SIZE: u64 = 1 << 30;

/// The zstd level objects are written with (see ARCHITECTURE.md, "Compression level").
pub const COMPRESSION_LEVEL: i32 = 1;

/// The shortest id prefix that is resolved.
pub const MIN_PREFIX_LEN: usize = 4;

/// A verified object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Its type.
    pub kind: ObjectType,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// Failures of the object layer.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// A file-system operation failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The remote store failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The object is not in the store.
    #[error("object {id} not found")]
    NotFound {
        /// The missing id.
        id: ObjectId,
    },
    /// The object file exists but is not a valid object with that id.
    #[error("object {id} at '{}' is corrupt: {reason}", path.display())]
    Corrupt {
        /// The object's id (its file name).
        id: ObjectId,
        /// Its file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Text that is neither an id nor an id prefix.
    #[error("{text:?} is not an object id (64 hex digits) or a prefix of at least 4")]
    BadId {
        /// The text given.
        text: String,
    },
    /// No object matches a prefix.
    #[error("no object matches the prefix {prefix}")]
    NoMatch {
        /// The prefix.
        prefix: String,
    },
    /// More than one object matches a prefix.
    #[error("the prefix {prefix} is ambiguous: {} objects match", candidates.len())]
    Ambiguous {
        /// The prefix.
        prefix: String,
        /// Every matching id, sorted.
        candidates: Vec<ObjectId>,
    },
    /// An unknown object type name.
    #[error("unknown object type {name:?} (known: blob, batch, log, dlq, item, checkpoint, items)")]
    BadType {
        /// The name given.
        name: String,
    },
    /// A payload larger than [`MAX_OBJECT_SIZE`].
    #[error("cannot store {size} bytes in one object: the limit is {MAX_OBJECT_SIZE}")]
    TooLarge {
        /// The payload size.
        size: u64,
    },
    /// A payload that does not fit its type (e.g. a `log` object that is not JSON).
    #[error("payload is not a valid {kind} object: {reason}")]
    BadPayload {
        /// The type it was meant to be.
        kind: ObjectType,
        /// What is wrong.
        reason: String,
    },
}

impl From<IdError> for ObjectError {
    fn from(e: IdError) -> ObjectError {
        match e {
            IdError::BadId { text } => ObjectError::BadId { text },
            IdError::BadType { name } => ObjectError::BadType { name },
        }
    }
}

impl crate::hint::Hint for ObjectError {
    fn hint(&self) -> Option<&'static str> {
        match self {
            ObjectError::Fs(e) => e.hint(),
            ObjectError::Remote(e) => e.hint(),
            ObjectError::NotFound { .. } => Some(
                "check that --home / --store name the right store; `prodigy fsck` names the refs that reach missing objects",
            ),
            ObjectError::Corrupt { .. } => Some(crate::hint::DAMAGED),
            ObjectError::NoMatch { .. } => Some(
                "`prodigy ref log <name>` and `prodigy jobs show <job>` list ids; check that --home / --store name the right store",
            ),
            // The candidates themselves are the hint; the command line lists them.
            ObjectError::Ambiguous { .. } => Some("the candidates are:"),
            ObjectError::BadId { .. }
            | ObjectError::BadType { .. }
            | ObjectError::TooLarge { .. }
            | ObjectError::BadPayload { .. } => None,
        }
    }
}

/// Checks that a payload fits its type: JSON types must hold one JSON document, `batch`
/// objects one JSON document per line. `blob` takes anything.
pub fn check_payload(kind: ObjectType, payload: &[u8]) -> Result<(), ObjectError> {
    let bad = |reason: String| ObjectError::BadPayload { kind, reason };
    match kind {
        ObjectType::Blob => Ok(()),
        ObjectType::Batch => {
            for (n, line) in payload.split(|b| *b == b'\n').enumerate() {
                if line.is_empty() {
                    continue;
                }
                serde_json::from_slice::<serde::de::IgnoredAny>(line)
                    .map_err(|e| bad(format!("line {}: {e}", n + 1)))?;
            }
            Ok(())
        }
        _ => serde_json::from_slice::<serde::de::IgnoredAny>(payload)
            .map(|_| ())
            .map_err(|e| bad(e.to_string())),
    }
}

thread_local! {
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd_safe::DCtx<'static>>> = const { RefCell::new(None) };
}

/// The canonical bytes of an object, compressed into one zstd frame (with its content size
/// recorded), and its id.
pub fn encode(kind: ObjectType, payload: &[u8]) -> Result<(ObjectId, Vec<u8>), ObjectError> {
    let id = ObjectId::hash(kind, payload);
    Ok((id, compress(&id, kind, payload)?))
}

/// The zstd frame of an object whose id is already known.
fn compress(id: &ObjectId, kind: ObjectType, payload: &[u8]) -> Result<Vec<u8>, ObjectError> {
    if payload.len() as u64 > MAX_OBJECT_SIZE {
        return Err(ObjectError::TooLarge {
            size: payload.len() as u64,
        });
    }
    let mut canonical = header(kind, payload.len()).into_bytes();
    canonical.extend_from_slice(payload);
    let frame = COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let mut c = zstd::bulk::Compressor::new(COMPRESSION_LEVEL)?;
            frame_parameters(&mut c)?;
            *slot = Some(c);
        }
        slot.as_mut()
            .map_or_else(missing_context, |c| compress_one(c, &canonical))
    });
    frame.map_err(|e| FsError::new("compress object", id.to_string(), e).into())
}

/// The frame parameters of every object: its size recorded, no checksum (the id is one),
/// no dictionary id (a pack says which dictionary its frames need).
fn frame_parameters(c: &mut zstd::bulk::Compressor<'_>) -> io::Result<()> {
    c.set_parameter(CParameter::ContentSizeFlag(true))?;
    c.set_parameter(CParameter::ChecksumFlag(false))?;
    c.set_parameter(CParameter::DictIdFlag(false))
}

fn compress_one(c: &mut zstd::bulk::Compressor<'_>, canonical: &[u8]) -> io::Result<Vec<u8>> {
    // A window as large as the content makes a single-segment frame, whose header is fully
    // determined by the content's size (see `check_frame_header`).
    c.set_parameter(CParameter::WindowLog(window_log(canonical.len())))?;
    c.compress(canonical)
}

/// Compresses objects' canonical bytes into the frames of a new pack — with the pack's
/// dictionary, or without one — and checks each frame by decoding it back (hash and all)
/// before handing it out: gc removes the loose copies once the pack is written, so a frame
/// that would not read back must never reach it.
pub struct PackEncoder<'d> {
    dictionary: Option<&'d Dictionary>,
    /// For objects up to `dict::SMALL` bytes and for larger ones (with a dictionary, their
    /// levels differ), each made when first needed.
    compressors: [Option<zstd::bulk::Compressor<'d>>; 2],
}

impl<'d> PackEncoder<'d> {
    /// An encoder for frames that need `dictionary` (at the level `Dictionary::encoder_for`
    /// gives an object's size), or none (level [`COMPRESSION_LEVEL`], the frames loose
    /// objects have).
    pub fn new(dictionary: Option<&'d Dictionary>) -> PackEncoder<'d> {
        PackEncoder {
            dictionary,
            compressors: [None, None],
        }
    }

    /// The frame of `canonical` (the verified canonical bytes of `id`), checked.
    pub fn encode(&mut self, id: &ObjectId, canonical: &[u8]) -> Result<Vec<u8>, ObjectError> {
        let failed =
            |e: io::Error| ObjectError::from(FsError::new("compress object", id.to_string(), e));
        let slot = &mut self.compressors[usize::from(canonical.len() > crate::store::dict::SMALL)];
        let compressor = match slot {
            Some(c) => c,
            None => {
                let mut c = match self.dictionary {
                    Some(d) => {
                        let prepared = d
                            .encoder_for(canonical.len())
                            .map_err(|e| failed(io::Error::other(e)))?;
                        zstd::bulk::Compressor::with_prepared_dictionary(prepared)
                            .map_err(failed)?
                    }
                    None => zstd::bulk::Compressor::new(COMPRESSION_LEVEL).map_err(failed)?,
                };
                frame_parameters(&mut c).map_err(failed)?;
                slot.insert(c)
            }
        };
        let frame = compress_one(compressor, canonical).map_err(failed)?;
        let (back, _, _) = verified(id, Path::new("the new pack"), &frame, self.dictionary)?;
        if back != canonical {
            return Err(ObjectError::Corrupt {
                id: *id,
                path: PathBuf::from("the new pack"),
                reason: "its frame does not decode to what was compressed".into(),
            });
        }
        Ok(frame)
    }
}

/// The smallest window log (10 to 31) whose window holds `len` bytes.
fn window_log(len: usize) -> u32 {
    let bits = usize::BITS - len.saturating_sub(1).leading_zeros();
    bits.clamp(10, 31)
}

/// Checks that a frame's header is exactly what [`compress`] writes — zstd magic; a
/// single-segment frame; no checksum, no dictionary, unused and reserved bits clear; the
/// content size in the smallest field that holds it — and returns the declared size. So
/// no byte of the header can change without the object being refused, even where zstd
/// itself would ignore the change.
fn check_frame_header(bytes: &[u8]) -> Result<u64, String> {
    if bytes.len() < 6 || bytes[..4] != [0x28, 0xb5, 0x2f, 0xfd] {
        return Err("not a zstd frame".into());
    }
    let descriptor = bytes[4];
    if descriptor & 0x3f != 0x20 {
        return Err(format!(
            "the frame header descriptor {descriptor:#04x} is not one this store writes"
        ));
    }
    let field = [1usize, 2, 4, 8][usize::from(descriptor >> 6)];
    let raw = bytes
        .get(5..5 + field)
        .ok_or("the frame header is truncated")?;
    let mut le = [0u8; 8];
    le[..field].copy_from_slice(raw);
    let value = u64::from_le_bytes(le);
    let size = if field == 2 { value + 256 } else { value };
    let smallest = if size < 256 {
        1
    } else if size < 65_536 + 256 {
        2
    } else if size < 0xFFFF_FFFF {
        4
    } else {
        8
    };
    if field != smallest {
        return Err(format!(
            "the frame records its size {size} in {field} bytes, not {smallest}"
        ));
    }
    Ok(size)
}

fn missing_context<T>() -> io::Result<T> {
    Err(io::Error::other("compression context missing"))
}

/// Decodes and verifies the bytes of an object file. `path` is only used in errors.
pub fn decode(id: &ObjectId, path: &Path, bytes: &[u8]) -> Result<Object, ObjectError> {
    decode_with(id, path, bytes, None)
}

/// [`decode`] of a frame compressed with `dictionary` (a pack's), or without one.
pub fn decode_with(
    id: &ObjectId,
    path: &Path,
    bytes: &[u8],
    dictionary: Option<&Dictionary>,
) -> Result<Object, ObjectError> {
    let (mut canonical, kind, payload_at) = verified(id, path, bytes, dictionary)?;
    canonical.drain(..payload_at);
    Ok(Object {
        kind,
        payload: canonical,
    })
}

/// Decodes one frame and checks everything: exactly one complete frame with the header
/// this store writes, a declared size within the limits (exactly that much is allocated),
/// a canonical object header, and the hash. Returns the canonical bytes, the type and
/// where the payload starts.
fn verified(
    id: &ObjectId,
    path: &Path,
    bytes: &[u8],
    dictionary: Option<&Dictionary>,
) -> Result<(Vec<u8>, ObjectType, usize), ObjectError> {
    let corrupt = |reason: String| ObjectError::Corrupt {
        id: *id,
        path: path.to_path_buf(),
        reason,
    };
    if bytes.is_empty() {
        return Err(corrupt("the file is empty".into()));
    }
    match zstd_safe::find_frame_compressed_size(bytes) {
        Ok(n) if n == bytes.len() => {}
        Ok(n) => {
            return Err(corrupt(format!(
                "{} bytes follow the zstd frame",
                bytes.len() - n
            )));
        }
        Err(code) => {
            return Err(corrupt(format!(
                "not a complete zstd frame ({})",
                zstd_safe::get_error_name(code)
            )));
        }
    }
    let limit = MAX_OBJECT_SIZE + 64;
    let size = check_frame_header(bytes).map_err(corrupt)?;
    if size > limit {
        return Err(corrupt(format!(
            "the frame declares {size} bytes, above the limit of {limit}"
        )));
    }
    let mut canonical = Vec::with_capacity(size as usize);
    let written = DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let mut d = zstd_safe::DCtx::try_create().ok_or("cannot create a zstd context")?;
            // Single-segment frames have windows as large as their content.
            d.set_parameter(DParameter::WindowLogMax(31))
                .map_err(zstd_safe::get_error_name)?;
            *slot = Some(d);
        }
        let d = slot.as_mut().ok_or("compression context missing")?;
        match dictionary {
            None => d.decompress(&mut canonical, bytes),
            Some(dictionary) => {
                d.decompress_using_ddict(&mut canonical, bytes, dictionary.decoder().as_ddict())
            }
        }
        .map_err(zstd_safe::get_error_name)
    });
    match written {
        Ok(n) if n as u64 == size => {}
        Ok(n) => {
            return Err(corrupt(format!(
                "the frame declares {size} bytes but holds {n}"
            )));
        }
        Err(e) => return Err(corrupt(format!("zstd: {e}"))),
    }
    let (kind, payload_at) = parse_header(&canonical).map_err(corrupt)?;
    let actual = ObjectId::from_bytes(*blake3::hash(&canonical).as_bytes());
    if actual != *id {
        return Err(corrupt(format!("its content hashes to {actual}")));
    }
    Ok((canonical, kind, payload_at))
}

/// [`decode`] for the bytes stored in `pack` at `offset`: with the pack's dictionary, and
/// a damaged object (or dictionary) named with the pack and the offset.
pub fn decode_packed(
    id: &ObjectId,
    pack: &Pack,
    offset: u64,
    stored: &[u8],
) -> Result<Object, ObjectError> {
    canonical_packed(id, pack, offset, stored).map(|(mut canonical, kind, payload_at)| {
        canonical.drain(..payload_at);
        Object {
            kind,
            payload: canonical,
        }
    })
}

/// The verified canonical bytes of a packed object (what gc compresses again into a new
/// pack), its type and where its payload starts.
pub fn canonical_packed(
    id: &ObjectId,
    pack: &Pack,
    offset: u64,
    stored: &[u8],
) -> Result<(Vec<u8>, ObjectType, usize), ObjectError> {
    let at_offset = |e: ObjectError| match e {
        ObjectError::Corrupt { id, path, reason } => ObjectError::Corrupt {
            id,
            path,
            reason: format!("{reason} (packed at offset {offset})"),
        },
        other => other,
    };
    let dictionary = pack.dictionary().map_err(|reason| {
        at_offset(ObjectError::Corrupt {
            id: *id,
            path: pack.pack_path().to_path_buf(),
            reason: format!("the pack cannot be read: {reason}"),
        })
    })?;
    let frame = pack.zstd_frame(stored);
    verified(id, pack.pack_path(), &frame, dictionary.as_deref()).map_err(at_offset)
}

/// The verified canonical bytes of a loose object's frame.
pub fn canonical(id: &ObjectId, path: &Path, frame: &[u8]) -> Result<Vec<u8>, ObjectError> {
    verified(id, path, frame, None).map(|(canonical, _, _)| canonical)
}

/// Parses `<type> <len>\0` at the start of `head` (which ends at the NUL).
fn parse_header_prefix(head: &[u8]) -> Result<(ObjectType, usize), String> {
    let nul = head
        .iter()
        .position(|b| *b == 0)
        .ok_or("no header terminator")?;
    let text = std::str::from_utf8(&head[..nul]).map_err(|_| "the header is not text")?;
    let (kind, len) = text
        .split_once(' ')
        .ok_or_else(|| format!("malformed header {text:?}"))?;
    let kind = ObjectType::from_str(kind).map_err(|e| e.to_string())?;
    let canonical_len = len.len() == 1 || !len.starts_with('0');
    if !canonical_len || len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("malformed length in header {text:?}"));
    }
    Ok((kind, nul + 1))
}

fn declared_len(head: &[u8]) -> Result<u64, String> {
    let text = std::str::from_utf8(&head[..head.len() - 1]).map_err(|_| "header not text")?;
    let (_, len) = text.split_once(' ').ok_or("malformed header")?;
    len.parse::<u64>()
        .map_err(|_| format!("malformed length {len:?}"))
}

/// Parses and checks the header of full canonical bytes; returns the type and where the
/// payload starts.
fn parse_header(canonical: &[u8]) -> Result<(ObjectType, usize), String> {
    let window = &canonical[..canonical.len().min(32)];
    let (kind, payload_at) = parse_header_prefix(window)?;
    let declared = declared_len(&canonical[..payload_at])?;
    let actual = (canonical.len() - payload_at) as u64;
    if declared != actual {
        return Err(format!(
            "the header declares {declared} bytes but {actual} follow"
        ));
    }
    Ok((kind, payload_at))
}

/// Loose object files `(id, path)` sorted by id, and the other files found among them.
pub type LooseListing = (Vec<(ObjectId, PathBuf)>, Vec<PathBuf>);

/// The object store of a home: loose objects, and packs (`crate::store::pack`) read
/// transparently.
#[derive(Debug, Clone)]
pub struct ObjectStore {
    home: PathBuf,
    objects: PathBuf,
    tmp: PathBuf,
    packs: Arc<Mutex<Option<Vec<Arc<Pack>>>>>,
    /// Where the objects live, chosen when the store opens.
    backend: Backend,
}

/// Where a store's objects (and refs) live: a closed choice, made once when the store
/// opens from the home's store address.
#[derive(Debug, Clone)]
pub(super) enum Backend {
    /// Loose files and packs in the home; refs are files moved under a flock.
    Files,
    /// An S3 store: objects are keys (the home's objects directory is their cache), refs
    /// move by conditional puts, run locks are leases.
    S3(Arc<Remote>),
    /// An S3 store that cannot be used (a bad address, or a build without S3): every
    /// operation fails with this error, so nothing is ever written to the home instead.
    Unusable(RemoteError),
}

impl ObjectStore {
    /// The object store of `home`.
    pub fn new(home: &Home) -> ObjectStore {
        match home.store() {
            None => ObjectStore {
                home: home.root().to_path_buf(),
                objects: home.objects_dir(),
                tmp: home.objects_tmp_dir(),
                packs: Arc::new(Mutex::new(None)),
                backend: Backend::Files,
            },
            Some(url) => ObjectStore {
                home: home.root().to_path_buf(),
                objects: home.cache_dir(),
                tmp: home.cache_dir().join("tmp"),
                packs: Arc::new(Mutex::new(None)),
                backend: match crate::store::s3::shared(url) {
                    Ok(remote) => Backend::S3(remote),
                    Err(e) => Backend::Unusable(e),
                },
            },
        }
    }

    /// Ok when the store can be used: always for a home, and for a remote store whose
    /// address was understood (nothing is asked of the server).
    pub fn usable(&self) -> Result<(), RemoteError> {
        self.s3().map(|_| ())
    }

    /// The S3 client, when the objects live in an S3 store.
    pub(super) fn s3(&self) -> Result<Option<&Arc<Remote>>, RemoteError> {
        match &self.backend {
            Backend::Files => Ok(None),
            Backend::S3(remote) => Ok(Some(remote)),
            Backend::Unusable(e) => Err(e.clone()),
        }
    }

    /// Keeps a verified frame in the cache (no fsync: a torn cache file fails its check
    /// and is fetched again).
    fn cache(&self, id: &ObjectId, frame: &[u8]) {
        let path = self.path(id);
        let fanout = path.parent().unwrap_or(&self.objects).to_path_buf();
        let tmp = self.tmp_dir_for(id);
        let _ = fsutil::ensure_dir(&self.home, &fanout)
            .and_then(|()| fsutil::ensure_dir(&self.home, &tmp))
            .and_then(|()| fsutil::write_temp(&tmp, "obj-", frame, 0o444, false))
            .and_then(|temp| fsutil::rename_into_place(temp, &path));
    }

    /// Fetches an object from the remote store, verifies it and caches it.
    fn fetch(&self, remote: &Remote, id: &ObjectId) -> Result<Object, ObjectError> {
        let key = keys::object(id);
        let Some((bytes, _)) = remote.get(&key)? else {
            return Err(ObjectError::NotFound { id: *id });
        };
        let object = decode(id, Path::new(&remote.address(&key)), &bytes)?;
        remote.confirm(*id.as_bytes());
        self.cache(id, &bytes);
        Ok(object)
    }

    /// True when each read pays a round trip (a remote store): a caller with many reads
    /// ahead gathers them for [`Self::prefetch`]; locally that would only read twice.
    pub fn wants_prefetch(&self) -> bool {
        matches!(self.s3(), Ok(Some(_)))
    }

    /// Fetches the objects of a remote store that the cache lacks, many at once, verifying
    /// each; a no-op for a local store. Best effort: an object that cannot be fetched is
    /// left for the read that follows to report.
    pub fn prefetch(&self, ids: &[ObjectId]) {
        let Ok(Some(remote)) = self.s3() else {
            return;
        };
        let wanted: Vec<ObjectId> = ids
            .iter()
            .filter(|id| !self.path(id).is_file())
            .copied()
            .collect();
        let keys: Vec<String> = wanted.iter().map(keys::object).collect();
        let Ok(bodies) = remote.get_many(&keys) else {
            return;
        };
        for ((id, key), body) in wanted.iter().zip(&keys).zip(bodies) {
            if let Some(bytes) = body
                && decode(id, Path::new(&remote.address(key)), &bytes).is_ok()
            {
                remote.confirm(*id.as_bytes());
                self.cache(id, &bytes);
            }
        }
    }

    /// Stores an object in the remote store (a no-op when it is there) and caches it.
    fn write_remote(
        &self,
        remote: &Remote,
        kind: ObjectType,
        payload: &[u8],
    ) -> Result<ObjectId, ObjectError> {
        let id = ObjectId::hash(kind, payload);
        if remote.is_confirmed(id.as_bytes()) {
            return Ok(id);
        }
        let frame = compress(&id, kind, payload)?;
        remote.check_conditional()?;
        remote.put(
            &keys::object(&id),
            frame.clone(),
            crate::store::s3::Put::Create,
        )?;
        remote.confirm(*id.as_bytes());
        self.cache(&id, &frame);
        Ok(id)
    }

    /// The file of a loose object.
    pub fn path(&self, id: &ObjectId) -> PathBuf {
        let hex = id.to_string();
        self.objects.join(&hex[..2]).join(&hex[2..])
    }

    /// The directory of the store's temp files (`objects/tmp/`).
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// Every file under `objects/tmp/` (temp files of writers running now or killed),
    /// sorted.
    pub fn temp_files(&self) -> Result<Vec<PathBuf>, ObjectError> {
        let mut files = Vec::new();
        let mut dirs = vec![self.tmp.clone()];
        while let Some(dir) = dirs.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(FsError::new("list", dir, e).into()),
            };
            for entry in entries {
                let entry = entry.at("list", &dir)?;
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                if is_dir && dir == self.tmp {
                    dirs.push(entry.path());
                } else {
                    files.push(entry.path());
                }
            }
        }
        files.sort();
        Ok(files)
    }

    /// Where an object's temp file is written: `objects/tmp/<2 hex>/`. One temp directory
    /// per fan-out directory spreads new inodes over the file system's block groups as
    /// git's per-fan-out temp files do; a single temp directory made ext4's inode
    /// allocator the bottleneck of bulk writes (ARCHITECTURE.md).
    pub fn tmp_dir_for(&self, id: &ObjectId) -> PathBuf {
        self.tmp.join(&id.to_string()[..2])
    }

    /// True when a regular file is stored under `id` (not verified; see [`Self::read`]).
    pub fn contains(&self, id: &ObjectId) -> Result<bool, ObjectError> {
        if let Some(remote) = self.s3()? {
            if remote.is_confirmed(id.as_bytes()) {
                return Ok(true);
            }
            let found = remote.exists(&keys::object(id))?;
            if found {
                remote.confirm(*id.as_bytes());
            }
            return Ok(found);
        }
        self.stored_locally(id, true)
    }

    /// Whether `id` is stored in this home: its loose file, or a pack. With `look_again`,
    /// a miss lists the packs directory again (a gc may have packed it since), as a read
    /// must; a write that only wants to skip a stored object need not: a pack made since
    /// costs at most a loose copy that the next gc removes, where the second look cost a
    /// system call per object written.
    fn stored_locally(&self, id: &ObjectId, look_again: bool) -> Result<bool, ObjectError> {
        let path = self.path(id);
        match fs::symlink_metadata(&path) {
            Ok(meta) => Ok(meta.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Ok(self.packed(id, look_again)?.is_some())
            }
            Err(e) => Err(FsError::new("inspect", path, e).into()),
        }
    }

    /// Removes the fan-out directories and the temp directories beside them that hold
    /// nothing (gc, once it has packed): an emptied directory keeps the blocks its entries
    /// took — 110 bytes an object after packing 1,000,000 on ext4 — as git's `prune-packed`
    /// removes its own. A writer that finds its directory gone makes it again
    /// ([`fsutil::write_temp_in`], [`fsutil::rename_into_place_in`]). Returns how many went.
    pub fn remove_empty_dirs(&self) -> usize {
        let mut removed = 0;
        for dir in [&self.objects, &self.tmp] {
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let fanout = is_fanout_name(&entry.file_name().to_string_lossy());
                // `remove_dir` refuses a directory that is not empty, as it must.
                if fanout
                    && entry.file_type().is_ok_and(|t| t.is_dir())
                    && fs::remove_dir(entry.path()).is_ok()
                {
                    removed += 1;
                }
            }
        }
        removed
    }

    /// The `objects/` directory.
    pub fn objects_dir(&self) -> &Path {
        &self.objects
    }

    /// The packs directory.
    pub fn pack_dir(&self) -> PathBuf {
        self.objects.join("pack")
    }

    /// The temp directory for packs.
    pub fn pack_tmp_dir(&self) -> PathBuf {
        self.tmp.join("pack")
    }

    /// Writes a pack of `objects` (see [`pack::write`]) into the pack directory, which is
    /// made as every directory of the home is (fsynced into its parent, no symlink
    /// followed), as is its temp directory. Durable once this returns; returns the index's
    /// path.
    pub fn write_pack(
        &self,
        dictionary: Option<&[u8]>,
        objects: impl IntoIterator<Item = (ObjectId, Vec<u8>)>,
    ) -> Result<PathBuf, FsError> {
        let (dir, tmp) = (self.pack_dir(), self.pack_tmp_dir());
        fsutil::ensure_dir(&self.home, &dir)?;
        fsutil::ensure_dir(&self.home, &tmp)?;
        pack::write(&dir, &tmp, dictionary, objects)
    }

    /// The packs (opened once; `reload` looks at the directory again). An index that does
    /// not open is skipped here: `fsck` names it.
    pub fn packs(&self, reload: bool) -> Vec<Arc<Pack>> {
        let mut cached = self.packs.lock().unwrap_or_else(|e| e.into_inner());
        if reload || cached.is_none() {
            let mut found = Vec::new();
            if let Ok(entries) = fs::read_dir(self.pack_dir()) {
                let mut paths: Vec<PathBuf> = entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "idx"))
                    .collect();
                paths.sort();
                for path in paths {
                    if let Ok(pack) = Pack::open(&path) {
                        found.push(Arc::new(pack));
                    }
                }
            }
            *cached = Some(found);
        }
        cached.clone().unwrap_or_default()
    }

    /// Where `id` is packed: its pack, offset and length. Looks at the packs directory
    /// again before saying no (a gc may have packed it since).
    pub fn find_packed(&self, id: &ObjectId) -> Result<Option<(Arc<Pack>, u64, u32)>, ObjectError> {
        self.packed(id, true)
    }

    /// Where `id` is packed, in the packs this store has opened and, with `look_again`, in
    /// those the packs directory holds now.
    fn packed(
        &self,
        id: &ObjectId,
        look_again: bool,
    ) -> Result<Option<(Arc<Pack>, u64, u32)>, ObjectError> {
        let looks: &[bool] = if look_again { &[false, true] } else { &[false] };
        for &reload in looks {
            for pack in self.packs(reload) {
                if let Some((offset, len)) = pack
                    .find(id)
                    .map_err(|e| FsError::new("read pack index", pack.idx_path(), e))?
                {
                    return Ok(Some((pack, offset, len)));
                }
            }
        }
        Ok(None)
    }

    fn read_packed(&self, id: &ObjectId) -> Result<Object, ObjectError> {
        let Some((pack, offset, len)) = self.find_packed(id)? else {
            return Err(ObjectError::NotFound { id: *id });
        };
        // An index that points past the pack's end (or a pack cut short) makes this object
        // unreadable: say which object.
        let bytes = pack.frame(offset, len).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => ObjectError::Corrupt {
                id: *id,
                path: pack.pack_path().to_path_buf(),
                reason: format!("its {len} bytes at offset {offset} are past the pack's end"),
            },
            _ => FsError::new("read pack", pack.pack_path(), e).into(),
        })?;
        decode_packed(id, &pack, offset, &bytes)
    }

    /// Stores an object durably (temp file, fsync, rename, fsync of the directory) and
    /// returns its id. An object that is already stored is not written again.
    pub fn write(&self, kind: ObjectType, payload: &[u8]) -> Result<ObjectId, ObjectError> {
        if let Some(remote) = self.s3()? {
            return self.write_remote(remote, kind, payload);
        }
        let id = ObjectId::hash(kind, payload);
        if self.stored_locally(&id, false)? {
            return Ok(id);
        }
        let frame = compress(&id, kind, payload)?;
        let path = self.path(&id);
        let fanout = path.parent().unwrap_or(&self.objects);
        let tmp = self.tmp_dir_for(&id);
        fsutil::ensure_dir(&self.home, fanout)?;
        fsutil::ensure_dir(&self.home, &tmp)?;
        let temp = fsutil::write_temp_in(&self.home, &tmp, "obj-", &frame, 0o444, true)?;
        fsutil::rename_into_place_in(&self.home, temp, &path)?;
        fsutil::sync_dir(fanout)?;
        Ok(id)
    }

    /// Starts a group of writes that share one durability barrier (see [`ObjectBatch`]).
    pub fn batch(&self) -> ObjectBatch<'_> {
        ObjectBatch {
            store: Cow::Borrowed(self),
            pending: Vec::new(),
            uploads: Vec::new(),
            upload_bytes: 0,
            seen: HashSet::new(),
            dirs_ready: [false; 256],
            tmp_ready: [false; 256],
            frames: Vec::new(),
            frame_bytes: 0,
            packing: false,
        }
    }

    /// [`Self::batch`] holding a handle of its own on the store, so that the group can
    /// be handed to another thread (the event logger's stages).
    pub fn batch_owned(&self) -> ObjectBatch<'static> {
        ObjectBatch {
            store: Cow::Owned(self.clone()),
            pending: Vec::new(),
            uploads: Vec::new(),
            upload_bytes: 0,
            seen: HashSet::new(),
            dirs_ready: [false; 256],
            tmp_ready: [false; 256],
            frames: Vec::new(),
            frame_bytes: 0,
            packing: false,
        }
    }

    /// Reads and verifies an object, loose or packed (a good packed copy beats a damaged
    /// loose one).
    pub fn read(&self, id: &ObjectId) -> Result<Object, ObjectError> {
        if let Some(remote) = self.s3()? {
            return match self.read_loose(id) {
                Ok(object) => Ok(object),
                Err(ObjectError::NotFound { .. } | ObjectError::Corrupt { .. }) => {
                    self.fetch(remote, id)
                }
                Err(e) => Err(e),
            };
        }
        match self.read_loose(id) {
            Err(ObjectError::NotFound { .. }) => self.read_packed(id),
            Err(e @ ObjectError::Corrupt { .. }) => self.read_packed(id).map_err(|_| e),
            other => other,
        }
    }

    /// Reads and verifies the loose copy of an object only (what `fsck` checks).
    pub fn read_loose(&self, id: &ObjectId) -> Result<Object, ObjectError> {
        let path = self.path(id);
        let bytes = match fsutil::read_nofollow(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ObjectError::NotFound { id: *id });
            }
            Err(e) if fsutil::is_symlink_refusal(&e) => {
                return Err(ObjectError::Corrupt {
                    id: *id,
                    path,
                    reason: "it is a symlink, which the store never follows".into(),
                });
            }
            Err(e) => return Err(FsError::new("read object", path, e).into()),
        };
        self.check_fanout(id, &path)?;
        decode(id, &path, &bytes)
    }

    /// Refuses an object whose fan-out directory is a symlink (which could point anywhere).
    fn check_fanout(&self, id: &ObjectId, path: &Path) -> Result<(), ObjectError> {
        let fanout = path.parent().unwrap_or(&self.objects);
        match fs::symlink_metadata(fanout) {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err(ObjectError::Corrupt {
                id: *id,
                path: path.to_path_buf(),
                reason: format!("'{}' is not a real directory", fanout.display()),
            }),
            Err(e) => Err(FsError::new("inspect", fanout, e).into()),
        }
    }

    /// Resolves a full id or a unique prefix of at least [`MIN_PREFIX_LEN`] hex digits
    /// (either case) to an id. A prefix must match exactly one stored object; a full id is
    /// returned without looking (reading it reports a missing object).
    pub fn resolve(&self, text: &str) -> Result<ObjectId, ObjectError> {
        let lower = text.to_ascii_lowercase();
        let is_hex = !lower.is_empty() && lower.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_hex || lower.len() < MIN_PREFIX_LEN || lower.len() > 64 {
            return Err(ObjectError::BadId {
                text: text.to_owned(),
            });
        }
        if lower.len() == 64 {
            // Returned as is: the read that follows says precisely what is wrong with it.
            return Ok(lower.parse()?);
        }
        let dir = self.objects.join(&lower[..2]);
        let rest = &lower[2..];
        let mut candidates = Vec::new();
        if let Some(remote) = self.s3()? {
            for listed in remote.list(&keys::objects_in(&lower[..2]))? {
                let name = listed.key.rsplit('/').next().unwrap_or_default();
                if name.len() == 62
                    && name.starts_with(rest)
                    && let Ok(id) = format!("{}{name}", &lower[..2]).parse()
                {
                    candidates.push(id);
                }
            }
            return pick(lower, candidates);
        }
        for pack in self.packs(true) {
            candidates.extend(
                pack.with_prefix(&lower)
                    .map_err(|e| FsError::new("read pack index", pack.idx_path(), e))?,
            );
        }
        let entries: Vec<io::Result<fs::DirEntry>> = match fs::read_dir(&dir) {
            Ok(entries) => entries.collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(FsError::new("list", dir, e).into()),
        };
        for entry in entries {
            let entry = entry.at("list", &dir)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.len() == 62
                && name.starts_with(rest)
                && let Ok(id) = format!("{}{name}", &lower[..2]).parse()
            {
                candidates.push(id);
            }
        }
        pick(lower, candidates)
    }

    /// Every loose object file: `(id, path)`, sorted by id. Files whose names are not ids
    /// are returned in the second list.
    pub fn list_loose(&self) -> Result<LooseListing, ObjectError> {
        let mut ids = Vec::new();
        let mut strays = Vec::new();
        let entries = match fs::read_dir(&self.objects) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((ids, strays)),
            Err(e) => return Err(FsError::new("list", &self.objects, e).into()),
        };
        for entry in entries {
            let entry = entry.at("list", &self.objects)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name == "tmp" || name == "pack" {
                continue;
            }
            let is_fanout = is_fanout_name(&name);
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if !is_fanout || !is_dir {
                strays.push(path);
                continue;
            }
            let inner_entries = match fs::read_dir(&path) {
                Ok(entries) => entries,
                // Emptied and removed by a gc since the listing above.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(FsError::new("list", &path, e).into()),
            };
            for inner in inner_entries {
                let inner = inner.at("list", &path)?;
                let file = inner.file_name().to_string_lossy().into_owned();
                match format!("{name}{file}").parse::<ObjectId>() {
                    Ok(id) if file.len() == 62 => ids.push((id, inner.path())),
                    _ => strays.push(inner.path()),
                }
            }
        }
        ids.sort();
        strays.sort();
        Ok((ids, strays))
    }
}

/// True for the name of a fan-out directory of `objects/`: two lowercase hex digits.
pub fn is_fanout_name(name: &str) -> bool {
    name.len() == 2 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A group of object writes with one durability barrier for all of them, as git's
/// `core.fsyncMethod=batch`: each object goes to a temp file without fsync; [`commit`]
/// flushes the file system once, renames every temp file into place, and flushes once
/// more. Until `commit` returns, none of the objects may be acknowledged. Dropping an
/// uncommitted batch removes its temp files. A group made [`packed`] keeps its frames in
/// memory instead and writes them as one pack when there are enough of them.
///
/// [`packed`]: ObjectBatch::packed
///
/// [`commit`]: ObjectBatch::commit
pub struct ObjectBatch<'a> {
    store: Cow<'a, ObjectStore>,
    pending: Vec<(TempPath, PathBuf)>,
    /// For a remote store: the frames to upload at commit (or once they come to
    /// [`UPLOAD_AHEAD_BYTES`]), and their bytes.
    uploads: Vec<(ObjectId, Vec<u8>)>,
    upload_bytes: usize,
    seen: HashSet<ObjectId>,
    dirs_ready: [bool; 256],
    tmp_ready: [bool; 256],
    /// The frames of a group that may become a pack (see [`ObjectBatch::packed`]).
    frames: Vec<(ObjectId, Vec<u8>)>,
    frame_bytes: usize,
    packing: bool,
}

/// The fewest objects a packing group writes as a pack (fewer are written loose), as
/// git keeps a fetched pack of at least `fetch.unpackLimit` (100) objects.
pub const PACK_MIN_OBJECTS: usize = 100;

/// The most bytes of frames a packing group keeps in memory; past it the group writes
/// loose objects, the frames it kept first.
const PACK_MAX_BYTES: usize = 256 << 20;

/// The frames a group for a remote store holds before uploading them ahead of its commit.
const UPLOAD_AHEAD_BYTES: usize = 64 << 20;

/// Packing groups write loose objects once the store holds this many packs, so that
/// readers, who look in every pack, have a bounded number to search until gc merges them
/// (it does once there are `gc::MAX_PACKS`).
pub const PACK_LIMIT: usize = 16;

impl ObjectBatch<'_> {
    /// Makes this group write its objects as one pack at commit — one file and its index
    /// instead of a file per object — when there are at least [`PACK_MIN_OBJECTS`] of
    /// them (for a local store; a bucket holds objects one by one) and the store holds
    /// fewer than [`PACK_LIMIT`] packs. Their frames wait in memory until then, up to
    /// `PACK_MAX_BYTES`, past which the group writes loose objects as a plain one does.
    pub fn packed(mut self) -> Self {
        self.packing = true;
        self
    }

    /// Adds an object; returns its id (valid only once [`Self::commit`] has returned).
    pub fn add(&mut self, kind: ObjectType, payload: &[u8]) -> Result<ObjectId, ObjectError> {
        self.add_hashed(ObjectId::hash(kind, payload), kind, payload)
    }

    /// [`Self::add`] of an object whose id the caller has computed (and remembered):
    /// `id` must be `ObjectId::hash(kind, payload)`, which debug builds check.
    pub fn add_hashed(
        &mut self,
        id: ObjectId,
        kind: ObjectType,
        payload: &[u8],
    ) -> Result<ObjectId, ObjectError> {
        self.add_framed(id, kind, payload, false).map(|(id, _)| id)
    }

    /// [`Self::add_hashed`], also returning a copy of the frame it compressed (`None`
    /// when the store or this group held the object already): a caller that must read
    /// the object back before the commit decodes it ([`decode`]).
    pub fn add_hashed_keeping_frame(
        &mut self,
        id: ObjectId,
        kind: ObjectType,
        payload: &[u8],
    ) -> Result<(ObjectId, Option<Vec<u8>>), ObjectError> {
        self.add_framed(id, kind, payload, true)
    }

    fn add_framed(
        &mut self,
        id: ObjectId,
        kind: ObjectType,
        payload: &[u8],
        keep: bool,
    ) -> Result<(ObjectId, Option<Vec<u8>>), ObjectError> {
        debug_assert_eq!(
            id,
            ObjectId::hash(kind, payload),
            "a wrong id for an object"
        );
        if let Some(remote) = self.store.s3()?.cloned() {
            if self.seen.insert(id) && !remote.is_confirmed(id.as_bytes()) {
                let frame = compress(&id, kind, payload)?;
                let kept = keep.then(|| frame.clone());
                self.upload_bytes += frame.len();
                self.uploads.push((id, frame));
                // Uploaded ahead of the commit past a bound, so a group of many large
                // objects (a job's transcripts, copied by `store push`) is not held whole;
                // they are written before any ref names them either way.
                if self.upload_bytes >= UPLOAD_AHEAD_BYTES {
                    self.upload(&remote)?;
                }
                return Ok((id, kept));
            }
            return Ok((id, None));
        }
        if self.seen.contains(&id) || self.store.stored_locally(&id, false)? {
            return Ok((id, None));
        }
        let mut frame = compress(&id, kind, payload)?;
        let kept = keep.then(|| frame.clone());
        if self.packing && self.frame_bytes + frame.len() <= PACK_MAX_BYTES {
            // Kept until commit: no more memory than the frame needs (zstd's output
            // buffer has room for the worst case).
            frame.shrink_to_fit();
            self.frame_bytes += frame.len();
            self.frames.push((id, frame));
        } else {
            self.write_loose_frames()?;
            self.write_temp(id, &frame)?;
        }
        self.seen.insert(id);
        Ok((id, kept))
    }

    /// Adds an object stored before this group began (by a group whose `commit` has
    /// returned), by its id alone: nothing is written, and the caller need not keep its
    /// payload. Refuses an id the store does not hold.
    pub fn add_stored(&mut self, id: ObjectId) -> Result<ObjectId, ObjectError> {
        let held = match self.store.s3()? {
            Some(remote) => {
                remote.is_confirmed(id.as_bytes()) || remote.exists(&keys::object(&id))?
            }
            None => self.seen.contains(&id) || self.store.stored_locally(&id, true)?,
        };
        if held {
            Ok(id)
        } else {
            Err(ObjectError::NotFound { id })
        }
    }

    /// Writes `frame` to a temp file, renamed into place at commit.
    fn write_temp(&mut self, id: ObjectId, frame: &[u8]) -> Result<(), ObjectError> {
        let slot = usize::from(id.as_bytes()[0]);
        let tmp = self.store.tmp_dir_for(&id);
        if !self.tmp_ready[slot] {
            fsutil::ensure_dir(&self.store.home, &tmp)?;
            self.tmp_ready[slot] = true;
        }
        let temp = fsutil::write_temp_in(
            &self.store.home,
            &tmp,
            "obj-",
            frame,
            0o444,
            !fsutil::BATCH_BARRIER_IS_FILESYSTEM_WIDE,
        )?;
        self.pending.push((temp, self.store.path(&id)));
        Ok(())
    }

    /// Writes the frames kept for a pack as loose objects (temp files) after all: from
    /// now on the group writes every object loose.
    fn write_loose_frames(&mut self) -> Result<(), ObjectError> {
        self.packing = false;
        self.frame_bytes = 0;
        for (id, frame) in std::mem::take(&mut self.frames) {
            self.write_temp(id, &frame)?;
        }
        Ok(())
    }

    /// Takes over the objects of `other` (of the same store), to share this group's
    /// barrier.
    pub fn absorb(&mut self, mut other: ObjectBatch<'_>) {
        self.pending.append(&mut other.pending);
        self.uploads.append(&mut other.uploads);
        self.upload_bytes += other.upload_bytes;
        self.seen.extend(other.seen.drain());
        self.frame_bytes += other.frame_bytes;
        self.frames.append(&mut other.frames);
    }

    /// Uploads the frames waiting, many at once, then caches them.
    fn upload(&mut self, remote: &crate::store::s3::Remote) -> Result<(), ObjectError> {
        let uploads = std::mem::take(&mut self.uploads);
        self.upload_bytes = 0;
        let keys: Vec<(String, &[u8])> = uploads
            .iter()
            .map(|(id, frame)| (keys::object(id), &frame[..]))
            .collect();
        remote.create_many(&keys)?;
        for (id, frame) in uploads {
            remote.confirm(*id.as_bytes());
            self.store.cache(&id, &frame);
        }
        Ok(())
    }

    /// Number of objects that this batch will write.
    pub fn len(&self) -> usize {
        self.pending.len() + self.uploads.len() + self.frames.len()
    }

    /// True when the batch will write nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes every added object durable: barrier, renames, barrier (for a remote store:
    /// every upload, many at once).
    pub fn commit(mut self) -> Result<(), ObjectError> {
        if let Some(remote) = self.store.s3()?.cloned() {
            return self.upload(&remote);
        }
        self.frames.sort_unstable_by_key(|(id, _)| *id);
        self.frames.dedup_by_key(|(id, _)| *id);
        if self.frames.len() >= PACK_MIN_OBJECTS
            && self.pending.is_empty()
            && self.store.packs(false).len() < PACK_LIMIT
        {
            let frames = std::mem::take(&mut self.frames);
            tracing::debug!(objects = frames.len(), "object batch: one pack");
            // Durable once this returns: the pack fsynced and renamed, then its index.
            self.store.write_pack(None, frames)?;
            self.store.packs(true);
            return Ok(());
        }
        self.write_loose_frames()?;
        if self.pending.is_empty() {
            return Ok(());
        }
        let store = &*self.store;
        tracing::debug!(
            objects = self.pending.len(),
            "object batch: durability barrier"
        );
        fsutil::sync_filesystem(&store.tmp)?;
        let mut touched = Vec::new();
        for (temp, path) in self.pending.drain(..) {
            let fanout = path.parent().unwrap_or(&store.objects).to_path_buf();
            let slot = usize::from(u8::from_str_radix(&path_fanout_name(&fanout), 16).unwrap_or(0));
            if !self.dirs_ready[slot] {
                fsutil::ensure_dir(&store.home, &fanout)?;
                self.dirs_ready[slot] = true;
                touched.push(fanout);
            }
            fsutil::rename_into_place_in(&store.home, temp, &path)?;
        }
        if fsutil::BATCH_BARRIER_IS_FILESYSTEM_WIDE {
            fsutil::sync_filesystem(&store.tmp)?;
        } else {
            for dir in touched {
                fsutil::sync_dir(&dir)?;
            }
        }
        Ok(())
    }
}

/// The one id a prefix matches, or why there is none.
fn pick(prefix: String, mut candidates: Vec<ObjectId>) -> Result<ObjectId, ObjectError> {
    candidates.sort();
    candidates.dedup();
    match candidates.len() {
        0 => Err(ObjectError::NoMatch { prefix }),
        1 => Ok(candidates[0]),
        _ => Err(ObjectError::Ambiguous { prefix, candidates }),
    }
}

fn path_fanout_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ObjectStore) {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path()).unwrap();
        (dir, ObjectStore::new(&home))
    }

    #[test]
    fn id_is_blake3_of_canonical_bytes() {
        let id = ObjectId::hash(ObjectType::Blob, b"hello");
        assert_eq!(
            id.to_string(),
            blake3::hash(b"blob 5\0hello").to_hex().as_str()
        );
    }

    #[test]
    fn write_read_dedup() {
        let (_dir, store) = store();
        let id = store.write(ObjectType::Log, b"{\"a\":1}").unwrap();
        let path = store.path(&id);
        let before = fs::metadata(&path).unwrap().modified().unwrap();
        assert_eq!(store.write(ObjectType::Log, b"{\"a\":1}").unwrap(), id);
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), before);
        let obj = store.read(&id).unwrap();
        assert_eq!(obj.kind, ObjectType::Log);
        assert_eq!(obj.payload, b"{\"a\":1}");
        let raw = zstd::decode_all(&fs::read(&path).unwrap()[..]).unwrap();
        assert_eq!(raw, b"log 7\0{\"a\":1}");
        assert!(store.temp_files().unwrap().is_empty());
    }

    #[test]
    fn batch_writes_and_dedups() {
        let (_dir, store) = store();
        let mut batch = store.batch();
        let a = batch.add(ObjectType::Blob, b"a").unwrap();
        let again = batch.add(ObjectType::Blob, b"a").unwrap();
        let b = batch.add(ObjectType::Blob, b"b").unwrap();
        assert_eq!(a, again);
        assert_eq!(batch.len(), 2);
        batch.commit().unwrap();
        assert_eq!(store.read(&a).unwrap().payload, b"a");
        assert_eq!(store.read(&b).unwrap().payload, b"b");
        assert!(store.temp_files().unwrap().is_empty());
    }

    #[test]
    fn dropped_batch_leaves_nothing() {
        let (_dir, store) = store();
        let mut batch = store.batch();
        let a = batch.add(ObjectType::Blob, b"a").unwrap();
        drop(batch);
        assert!(!store.contains(&a).unwrap());
        assert!(store.temp_files().unwrap().is_empty());
    }

    #[test]
    fn refuses_noncanonical_headers() {
        for head in ["blob 05\0", "blob \0", "blob 5 \0", "nope 5\0", "blob -5\0"] {
            let mut canonical = head.as_bytes().to_vec();
            canonical.extend_from_slice(b"hello");
            assert!(parse_header(&canonical).is_err(), "{head:?}");
        }
        assert!(parse_header(b"blob 5\0hell").is_err());
        assert!(parse_header(b"blob 0\0").is_ok());
    }

    #[test]
    fn refuses_trailing_frames() {
        let (_dir, store) = store();
        let id = store.write(ObjectType::Blob, b"x").unwrap();
        let path = store.path(&id);
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend(zstd::encode_all(&b"more"[..], 1).unwrap());
        let err = decode(&id, &path, &bytes).unwrap_err().to_string();
        assert!(err.contains("follow the zstd frame"), "{err}");
    }

    #[test]
    fn only_the_frames_this_store_writes_are_accepted() {
        use std::io::Write;
        let id = ObjectId::hash(ObjectType::Blob, b"0123456789");
        let (_, good) = encode(ObjectType::Blob, b"0123456789").unwrap();
        assert_eq!(
            decode(&id, Path::new("x"), &good).unwrap().payload,
            b"0123456789"
        );
        // The same content, in a frame that does not record its size (a bomb's shape: its
        // content runs 30 MB past the header).
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 19).unwrap();
        enc.include_contentsize(false).unwrap();
        enc.write_all(b"blob 10\0").unwrap();
        enc.write_all(&vec![b'0'; 30 << 20]).unwrap();
        let bomb = enc.finish().unwrap();
        assert!(bomb.len() < 4096, "bomb is {} bytes", bomb.len());
        let err = decode(&id, Path::new("x"), &bomb).unwrap_err().to_string();
        assert!(err.contains("not one this store writes"), "{err}");
        // zstd ignores the unused bit; the store does not.
        let mut flipped = good.clone();
        flipped[4] ^= 0x10;
        let err = decode(&id, Path::new("x"), &flipped)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not one this store writes"), "{err}");
        // Large objects are single-segment too.
        let big = vec![7u8; 3 << 20];
        let (big_id, frame) = encode(ObjectType::Blob, &big).unwrap();
        assert_eq!(frame[4] & 0x20, 0x20);
        assert_eq!(
            decode(&big_id, Path::new("x"), &frame).unwrap().payload,
            big
        );
    }

    /// Frames compressed with a pack's dictionary have the header loose frames have, read
    /// back with that dictionary, and are refused — never misread — without it or with
    /// another one.
    #[test]
    fn dictionary_frames_are_checked_like_loose_ones() {
        let objects: Vec<(ObjectId, Vec<u8>)> = (0..3000)
            .map(|i| {
                let payload = format!(
                    "{{\"item\":{i},\"error\":\"exit {}\",\"pad\":\"{}\"}}",
                    i % 7,
                    "x".repeat(40)
                );
                let id = ObjectId::hash(ObjectType::Item, payload.as_bytes());
                let mut canonical = header(ObjectType::Item, payload.len()).into_bytes();
                canonical.extend_from_slice(payload.as_bytes());
                (id, canonical)
            })
            .collect();
        let samples: Vec<Vec<u8>> = objects.iter().map(|o| o.1.clone()).collect();
        let dict = Dictionary::new(crate::store::dict::train(&samples).unwrap()).unwrap();
        let other = Dictionary::new(crate::store::dict::train(&samples[..1500]).unwrap()).unwrap();
        let mut encoder = PackEncoder::new(Some(&dict));
        let mut plain = PackEncoder::new(None);
        let path = Path::new("x");
        let (mut tried, mut refused) = (0, 0);
        for (id, canonical) in objects.iter().step_by(100) {
            let frame = encoder.encode(id, canonical).unwrap();
            let loose = plain.encode(id, canonical).unwrap();
            assert_eq!(
                frame[..5],
                loose[..5],
                "the same header: magic, single segment"
            );
            assert!(
                frame.len() < loose.len() / 2,
                "{} vs {}",
                frame.len(),
                loose.len()
            );
            let object = decode_with(id, path, &frame, Some(&dict)).unwrap();
            assert_eq!(object.kind, ObjectType::Item);
            let object = &object;
            assert_eq!(
                canonical[canonical.len() - object.payload.len()..],
                object.payload
            );
            assert!(decode(id, path, &frame).is_err());
            assert!(decode_with(id, path, &frame, Some(&other)).is_err());
            // A plain frame read with a dictionary: refused or right, never wrong.
            if let Ok(o) = decode_with(id, path, &loose, Some(&dict)) {
                assert_eq!(ObjectId::hash(o.kind, &o.payload), *id);
            }
            // A changed byte is refused, or (where zstd ignores a bit inside a block) reads
            // as exactly the object: the hash decides, and a pack's checksum (fsck) sees it.
            for at in 0..frame.len() {
                for bit in 0..8 {
                    let mut bad = frame.clone();
                    bad[at] ^= 1 << bit;
                    match decode_with(id, path, &bad, Some(&dict)) {
                        Ok(o) => assert_eq!(&o, object, "byte {at} bit {bit}"),
                        Err(_) => refused += 1,
                    }
                    tried += 1;
                }
            }
        }
        assert!(refused * 10 > tried * 9, "{refused} of {tried} refused");
    }

    /// A frame whose content does not hash to the id it is encoded for never reaches a
    /// pack.
    #[test]
    fn the_pack_encoder_checks_what_it_encodes() {
        let mut encoder = PackEncoder::new(None);
        let id = ObjectId::hash(ObjectType::Blob, b"right");
        assert!(encoder.encode(&id, b"blob 5\0right").is_ok());
        let err = encoder.encode(&id, b"blob 5\0wrong").unwrap_err();
        assert!(matches!(err, ObjectError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn prefixes_resolve_or_list_candidates() {
        let (_dir, store) = store();
        // Hashes are deterministic, so this finds the same 4-digit collision every run.
        let mut seen = std::collections::HashMap::new();
        let mut batch = store.batch();
        let mut collision = None;
        for n in 0..100_000 {
            let id = batch
                .add(ObjectType::Blob, format!("{n}").as_bytes())
                .unwrap();
            if let Some(other) = seen.insert(id.to_string()[..4].to_owned(), id) {
                collision = Some((other, id));
                break;
            }
        }
        batch.commit().unwrap();
        let (first, second) = collision.unwrap();
        let prefix = &first.to_string()[..4];
        match store.resolve(prefix) {
            Err(ObjectError::Ambiguous { candidates, .. }) => {
                let mut want = vec![first, second];
                want.sort();
                assert_eq!(candidates, want);
            }
            other => panic!("{other:?}"),
        }
        let hex = first.to_string();
        let unique = (5..=64)
            .map(|n| &hex[..n])
            .find(|p| !second.to_string().starts_with(p))
            .unwrap();
        assert_eq!(store.resolve(unique).unwrap(), first);
        assert_eq!(store.resolve(&hex.to_uppercase()).unwrap(), first);
        assert!(matches!(
            store.resolve(&hex[..3]),
            Err(ObjectError::BadId { .. })
        ));
        assert!(matches!(
            store.resolve("zzzz"),
            Err(ObjectError::BadId { .. })
        ));
        let absent = (0..=0xffffu32)
            .map(|n| format!("{n:04x}"))
            .find(|p| !seen.contains_key(p))
            .unwrap();
        assert!(matches!(
            store.resolve(&absent),
            Err(ObjectError::NoMatch { .. })
        ));
    }
}
