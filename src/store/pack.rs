//! Packs (DESIGN.md §10): many objects in one file, found through a sorted index, so that
//! a home with millions of objects is a few files instead of millions.
//!
//! **Version 2** (written since issue 25):
//!
//! - `objects/pack/pack-<hash>.pack`: `PRODPAK2`; the length `D` of the pack's zstd
//!   dictionary (u32 LE; 0: the frames need none); the dictionary (`D` bytes); its BLAKE3
//!   (32 bytes); then per object, in id order, its zstd frame — compressed with the
//!   dictionary when there is one — without the frame's 4-byte magic number, which every
//!   frame would repeat ([`Pack::zstd_frame`] puts it back). `<hash>` is the BLAKE3 of the
//!   pack file, so two different packs never share a name.
//! - `objects/pack/pack-<hash>.idx`: `PRODIDX2`; the object count (u64 LE); the pack's
//!   length (u64 LE); a fan-out table of 256 u32 LE (entry `b`: how many ids begin with a
//!   byte ≤ `b`); the ids in order (32 bytes each); each object's offset in the pack (u32
//!   LE; with the high bit set, its low 31 bits index the table of u64 LE offsets that
//!   follows, for packs past 2 GiB); then the BLAKE3 of the pack file and the BLAKE3 of
//!   everything before it in the index. A frame ends where the next begins, the last at
//!   the pack's end: 36 bytes of index an object.
//!
//! **Version 1** (read; the next gc rewrites it as version 2): `PRODPACK`, then the frames
//! exactly as loose files hold them; its index `PRODIDX1`, the count, the fan-out table,
//! per object its id, offset (u64 LE) and length (u32 LE), and the same two checksums.
//! Named by the BLAKE3 of the sorted ids.
//!
//! A lookup reads the fan-out bounds of the id's first byte and binary-searches the ids
//! with positioned reads: O(log n) small reads, the index is never loaded whole. Every
//! object read from a pack is decoded and re-hashed like a loose one (the pack's
//! dictionary is checked against its checksum first, once per open pack). An index is
//! renamed into place only after its pack is durable, so a pack without an index is not a
//! pack (gc removes it).

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::fsutil::{self, FsError, IoContext};
use crate::store::dict::{self, Dictionary};
use crate::store::id::ObjectId;

const PACK_MAGIC_V1: &[u8; 8] = b"PRODPACK";
const IDX_MAGIC_V1: &[u8; 8] = b"PRODIDX1";
const PACK_MAGIC: &[u8; 8] = b"PRODPAK2";
const IDX_MAGIC: &[u8; 8] = b"PRODIDX2";
const FANOUT: u64 = 256 * 4;
const HEADER_V1: u64 = 8 + 8 + FANOUT;
const HEADER: u64 = 8 + 8 + 8 + FANOUT;
const ENTRY_V1: u64 = 32 + 8 + 4;
const TRAILER: u64 = 64;
/// Where a version 2 pack's dictionary starts (after the magic and its length).
const DICT_AT: u64 = 8 + 4;
/// An offset with this bit set indexes the table of large offsets.
const LARGE: u32 = 1 << 31;
/// Every zstd frame begins with these bytes; version 2 packs leave them out.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// One index entry: an object's id, and its frame's offset and length in the pack.
pub type Entry = (ObjectId, u64, u32);

/// The layout of an open pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    V1,
    /// `large`: how many 64-bit offsets follow the 32-bit ones; `end`: the pack's length
    /// as the index records it (where the last frame ends).
    V2 {
        large: u64,
        end: u64,
    },
}

/// An open pack and its index.
#[derive(Debug)]
pub struct Pack {
    idx_path: PathBuf,
    pack_path: PathBuf,
    idx: File,
    pack: File,
    count: u64,
    fanout: Vec<u32>,
    // The pack's length when opened: no entry may reach past it (a damaged index must not
    // make a read allocate what its length field says).
    pack_len: u64,
    format: Format,
    /// The dictionary, read and checked on first use (lookups never need it).
    dictionary: OnceLock<Result<Option<Arc<Dictionary>>, String>>,
}

impl Pack {
    /// Opens the pack whose index is `idx_path` (either version), checking the index's
    /// shape (its size, its fan-out table); the checksums are for [`Pack::verify`].
    pub fn open(idx_path: &Path) -> Result<Pack, String> {
        let pack_path = idx_path.with_extension("pack");
        let idx = File::open(idx_path).map_err(|e| format!("cannot open: {e}"))?;
        let pack = File::open(&pack_path).map_err(|e| format!("its pack: {e}"))?;
        let mut magic = [0u8; 8];
        idx.read_exact_at(&mut magic, 0)
            .map_err(|_| "the index is shorter than its header".to_owned())?;
        let v1 = match &magic {
            m if m == IDX_MAGIC => false,
            m if m == IDX_MAGIC_V1 => true,
            _ => return Err("not a pack index (bad magic)".into()),
        };
        let header = if v1 { HEADER_V1 } else { HEADER };
        let mut head = vec![0u8; header as usize];
        idx.read_exact_at(&mut head, 0)
            .map_err(|_| "the index is shorter than its header".to_owned())?;
        let count = le_u64(&head[8..16]);
        let fanout: Vec<u32> = head[(header - FANOUT) as usize..]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        let len = idx.metadata().map_err(|e| e.to_string())?.len();
        let format = if v1 {
            let want = count
                .checked_mul(ENTRY_V1)
                .and_then(|n| n.checked_add(HEADER_V1 + TRAILER));
            if want != Some(len) {
                return Err(format!("the index is {len} bytes, its count says {want:?}"));
            }
            Format::V1
        } else {
            // What is left after the ids and the 32-bit offsets is the table of large ones.
            let fixed = count
                .checked_mul(32 + 4)
                .and_then(|n| n.checked_add(HEADER + TRAILER));
            let large = match fixed {
                Some(fixed) if len >= fixed && (len - fixed) % 8 == 0 => (len - fixed) / 8,
                _ => {
                    return Err(format!(
                        "the index is {len} bytes, which does not fit its count of {count}"
                    ));
                }
            };
            Format::V2 {
                large,
                end: le_u64(&head[16..24]),
            }
        };
        if fanout.windows(2).any(|w| w[0] > w[1]) || fanout.last().map(|&n| n as u64) != Some(count)
        {
            return Err("the fan-out table is not monotonic or does not end at the count".into());
        }
        let pack_len = pack.metadata().map_err(|e| format!("its pack: {e}"))?.len();
        Ok(Pack {
            idx_path: idx_path.to_owned(),
            pack_path,
            idx,
            pack,
            count,
            fanout,
            pack_len,
            format,
            dictionary: OnceLock::new(),
        })
    }

    /// The pack file.
    pub fn pack_path(&self) -> &Path {
        &self.pack_path
    }

    /// The index file.
    pub fn idx_path(&self) -> &Path {
        &self.idx_path
    }

    /// The pack file's length when it was opened.
    pub fn pack_len(&self) -> u64 {
        self.pack_len
    }

    /// Objects in the pack.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// True when the pack holds nothing.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The format version: 1 (frames as loose files hold them) or 2 (a dictionary, frames
    /// without their magic number, a smaller index).
    pub fn version(&self) -> u8 {
        match self.format {
            Format::V1 => 1,
            Format::V2 { .. } => 2,
        }
    }

    /// The pack's dictionary, read and checked against its checksum on first use; `None`
    /// when its frames need none. An error says what is wrong with it (every object of the
    /// pack is then unreadable).
    pub fn dictionary(&self) -> Result<Option<Arc<Dictionary>>, String> {
        self.dictionary
            .get_or_init(|| match self.format {
                Format::V1 => Ok(None),
                Format::V2 { .. } => self.read_dictionary(),
            })
            .clone()
    }

    fn read_dictionary(&self) -> Result<Option<Arc<Dictionary>>, String> {
        let mut head = [0u8; DICT_AT as usize];
        self.pack
            .read_exact_at(&mut head, 0)
            .map_err(|e| format!("cannot read the pack's header: {e}"))?;
        if &head[..8] != PACK_MAGIC {
            return Err("the pack does not begin with PRODPAK2".into());
        }
        let len = u32::from_le_bytes(head[8..12].try_into().unwrap_or_default()) as u64;
        if len > dict::MAX_STORED {
            return Err(format!(
                "its dictionary declares {len} bytes, more than a pack may hold ({})",
                dict::MAX_STORED
            ));
        }
        if DICT_AT + len + 32 > self.pack_len {
            return Err(format!(
                "its dictionary ({len} bytes at offset {DICT_AT}) reaches past the pack's {} bytes",
                self.pack_len
            ));
        }
        let mut bytes = vec![0u8; len as usize + 32];
        self.pack
            .read_exact_at(&mut bytes, DICT_AT)
            .map_err(|e| format!("cannot read its dictionary: {e}"))?;
        let sum = bytes.split_off(len as usize);
        if blake3::hash(&bytes).as_bytes()[..] != sum[..] {
            return Err(format!(
                "its dictionary ({len} bytes at offset {DICT_AT}) does not match its checksum"
            ));
        }
        if bytes.is_empty() {
            return Ok(None);
        }
        Dictionary::new(bytes)
            .map(|d| Some(Arc::new(d)))
            .map_err(|e| format!("its dictionary (at offset {DICT_AT}): {e}"))
    }

    /// The zstd frame of an object whose stored bytes are `stored` (a version 2 pack
    /// leaves out the magic number every frame begins with).
    pub fn zstd_frame<'a>(&self, stored: &'a [u8]) -> Cow<'a, [u8]> {
        match self.format {
            Format::V1 => Cow::Borrowed(stored),
            Format::V2 { .. } => {
                let mut frame = Vec::with_capacity(ZSTD_MAGIC.len() + stored.len());
                frame.extend_from_slice(&ZSTD_MAGIC);
                frame.extend_from_slice(stored);
                Cow::Owned(frame)
            }
        }
    }

    fn id_at(&self, i: u64) -> io::Result<ObjectId> {
        let mut id = [0u8; 32];
        let at = match self.format {
            Format::V1 => HEADER_V1 + i * ENTRY_V1,
            Format::V2 { .. } => HEADER + i * 32,
        };
        self.idx.read_exact_at(&mut id, at)?;
        Ok(ObjectId::from_bytes(id))
    }

    /// Where entry `i` is: `(offset, length)`. An entry that cannot be right (an offset
    /// out of order, a large offset that is not there) gets an offset past any pack, so
    /// that reading it reports it as reaching outside the pack.
    fn place(&self, i: u64) -> io::Result<(u64, u32)> {
        match self.format {
            Format::V1 => {
                let mut buf = [0u8; 12];
                self.idx
                    .read_exact_at(&mut buf, HEADER_V1 + i * ENTRY_V1 + 32)?;
                let len = u32::from_le_bytes(buf[8..12].try_into().unwrap_or_default());
                Ok((le_u64(&buf[..8]), len))
            }
            Format::V2 { end, .. } => {
                let offset = self.offset_v2(i)?;
                let next = if i + 1 < self.count {
                    self.offset_v2(i + 1)?
                } else {
                    end
                };
                Ok(span(offset, next))
            }
        }
    }

    fn offset_v2(&self, i: u64) -> io::Result<u64> {
        let Format::V2 { large, .. } = self.format else {
            return Ok(u64::MAX);
        };
        let mut buf = [0u8; 4];
        self.idx
            .read_exact_at(&mut buf, HEADER + self.count * 32 + i * 4)?;
        let small = u32::from_le_bytes(buf);
        if small & LARGE == 0 {
            return Ok(small as u64);
        }
        let j = (small & !LARGE) as u64;
        if j >= large {
            return Ok(u64::MAX);
        }
        let mut wide = [0u8; 8];
        self.idx
            .read_exact_at(&mut wide, HEADER + self.count * 36 + j * 8)?;
        Ok(u64::from_le_bytes(wide))
    }

    fn bucket(&self, first: u8) -> (u64, u64) {
        let hi = self.fanout[first as usize] as u64;
        let lo = if first == 0 {
            0
        } else {
            self.fanout[first as usize - 1] as u64
        };
        (lo, hi)
    }

    /// Where `id` is in the pack: `(offset, length)`.
    pub fn find(&self, id: &ObjectId) -> io::Result<Option<(u64, u32)>> {
        let (mut lo, mut hi) = self.bucket(id.as_bytes()[0]);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.id_at(mid)?.cmp(id) {
                std::cmp::Ordering::Equal => return self.place(mid).map(Some),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Ok(None)
    }

    /// The bytes stored at `offset` (for a version 2 pack, a frame without its magic
    /// number: see [`Pack::zstd_frame`]).
    pub fn frame(&self, offset: u64, len: u32) -> io::Result<Vec<u8>> {
        if offset
            .checked_add(len as u64)
            .is_none_or(|end| end > self.pack_len)
        {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the entry reaches past the pack's {} bytes", self.pack_len),
            ));
        }
        let mut buf = vec![0u8; len as usize];
        self.pack.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// Every entry, in id order (the index is read in one read per table).
    pub fn entries(&self) -> io::Result<Vec<Entry>> {
        let n = self.count as usize;
        match self.format {
            Format::V1 => {
                let mut table = vec![0u8; n * ENTRY_V1 as usize];
                self.idx.read_exact_at(&mut table, HEADER_V1)?;
                Ok(table
                    .chunks_exact(ENTRY_V1 as usize)
                    .map(|e| {
                        let len = u32::from_le_bytes(e[40..44].try_into().unwrap_or_default());
                        (id_of(&e[..32]), le_u64(&e[32..40]), len)
                    })
                    .collect())
            }
            Format::V2 { large, end } => {
                let mut table = vec![0u8; n * 36 + large as usize * 8];
                self.idx.read_exact_at(&mut table, HEADER)?;
                let (ids, rest) = table.split_at(n * 32);
                let (small, wide) = rest.split_at(n * 4);
                let offsets: Vec<u64> = small
                    .chunks_exact(4)
                    .map(|c| {
                        let small = u32::from_le_bytes(c.try_into().unwrap_or_default());
                        if small & LARGE == 0 {
                            return small as u64;
                        }
                        let j = (small & !LARGE) as usize;
                        wide.get(j * 8..j * 8 + 8).map_or(u64::MAX, le_u64)
                    })
                    .collect();
                Ok(ids
                    .chunks_exact(32)
                    .enumerate()
                    .map(|(i, id)| {
                        let next = offsets.get(i + 1).copied().unwrap_or(end);
                        let (offset, len) = span(offsets[i], next);
                        (id_of(id), offset, len)
                    })
                    .collect())
            }
        }
    }

    /// The ids whose hex starts with `prefix` (at least two hex digits).
    pub fn with_prefix(&self, prefix: &str) -> io::Result<Vec<ObjectId>> {
        let Ok(first) = u8::from_str_radix(&prefix[..2], 16) else {
            return Ok(Vec::new());
        };
        let (lo, hi) = self.bucket(first);
        let mut out = Vec::new();
        for i in lo..hi {
            let id = self.id_at(i)?;
            if id.to_string().starts_with(prefix) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Checks both checksums, the dictionary (version 2), and that the entries are sorted,
    /// unique, and inside the pack (version 2: one after another, from the end of the
    /// dictionary to the pack's end).
    pub fn verify(&self) -> Result<(), String> {
        let idx_len = self.idx.metadata().map_err(|e| e.to_string())?.len();
        let mut body = vec![0u8; (idx_len - TRAILER) as usize];
        self.idx
            .read_exact_at(&mut body, 0)
            .map_err(|e| e.to_string())?;
        let mut trailer = [0u8; TRAILER as usize];
        self.idx
            .read_exact_at(&mut trailer, idx_len - TRAILER)
            .map_err(|e| e.to_string())?;
        if blake3::hash(&body).as_bytes() != &trailer[32..] {
            return Err("the index checksum does not match".into());
        }
        let mut hasher = blake3::Hasher::new();
        let mut file = &self.pack;
        io::copy(&mut file, &mut hasher).map_err(|e| e.to_string())?;
        let pack_len = self.pack.metadata().map_err(|e| e.to_string())?.len();
        if hasher.finalize().as_bytes() != &trailer[..32] {
            return Err("the pack checksum does not match its index".into());
        }
        let entries = self.entries().map_err(|e| e.to_string())?;
        let first = match self.format {
            Format::V1 => PACK_MAGIC_V1.len() as u64,
            Format::V2 { end, .. } => {
                if end != pack_len {
                    return Err(format!(
                        "the pack is {pack_len} bytes, its index says {end}"
                    ));
                }
                let dictionary = self.dictionary()?;
                DICT_AT + dictionary.map_or(0, |d| d.bytes().len() as u64) + 32
            }
        };
        let mut last: Option<&Entry> = None;
        for (i, entry) in entries.iter().enumerate() {
            let (id, offset, len) = *entry;
            if last.is_some_and(|l| l.0 >= id) {
                return Err(format!("entry {i} ({id}) is out of order"));
            }
            if offset < first || offset.saturating_add(len as u64) > pack_len {
                return Err(format!(
                    "entry {i} ({id}) points outside the pack at offset {offset}"
                ));
            }
            let first_frame = matches!(self.format, Format::V2 { .. }) && last.is_none();
            if first_frame && offset != first {
                return Err(format!(
                    "entry {i} ({id}) is at offset {offset}, not where the frames begin ({first})"
                ));
            }
            last = Some(entry);
        }
        Ok(())
    }
}

/// `(offset, length)` of a frame running from `offset` to `next`; one that cannot be (out
/// of order, or longer than a frame can be) is placed past any pack.
fn span(offset: u64, next: u64) -> (u64, u32) {
    match next.checked_sub(offset).map(u32::try_from) {
        Some(Ok(len)) if offset != u64::MAX => (offset, len),
        _ => (u64::MAX, 0),
    }
}

fn le_u64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().unwrap_or_default())
}

fn id_of(bytes: &[u8]) -> ObjectId {
    let mut id = [0u8; 32];
    id.copy_from_slice(bytes);
    ObjectId::from_bytes(id)
}

/// Writes a version 2 pack of `objects` — `(id, zstd frame)`, sorted by id, no duplicates,
/// each frame compressed with `dictionary` when there is one — into `dir` through a temp
/// file in `tmp` (both made beforehand: see `ObjectStore::write_pack`): the pack durably
/// first, then its index. Returns the index's path.
pub fn write(
    dir: &Path,
    tmp: &Path,
    dictionary: Option<&[u8]>,
    objects: impl IntoIterator<Item = (ObjectId, Vec<u8>)>,
) -> Result<PathBuf, FsError> {
    let temp = tempfile::Builder::new()
        .prefix("pack-")
        .suffix(".tmp")
        .tempfile_in(tmp)
        .at("create temp pack", tmp)?;
    let mut out = io::BufWriter::with_capacity(1 << 20, temp.as_file());
    let mut hasher = blake3::Hasher::new();
    let dictionary = dictionary.unwrap_or_default();
    let mut head = PACK_MAGIC.to_vec();
    let dict_len = u32::try_from(dictionary.len())
        .ok()
        .filter(|n| u64::from(*n) <= dict::MAX_STORED)
        .ok_or_else(|| {
            FsError::new(
                "write pack",
                temp.path(),
                io::Error::new(io::ErrorKind::InvalidInput, "the dictionary is too large"),
            )
        })?;
    head.extend_from_slice(&dict_len.to_le_bytes());
    head.extend_from_slice(dictionary);
    head.extend_from_slice(blake3::hash(dictionary).as_bytes());
    out.write_all(&head).at("write pack", temp.path())?;
    hasher.update(&head);
    let mut ids: Vec<ObjectId> = Vec::new();
    let mut offsets: Vec<u64> = Vec::new();
    let mut offset = head.len() as u64;
    for (id, frame) in objects {
        let Some(body) = frame.strip_prefix(&ZSTD_MAGIC[..]) else {
            return Err(FsError::new(
                "write pack",
                temp.path(),
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("the frame of {id} is not a zstd frame"),
                ),
            ));
        };
        out.write_all(body).at("write pack", temp.path())?;
        hasher.update(body);
        ids.push(id);
        offsets.push(offset);
        offset += body.len() as u64;
    }
    out.flush().at("write pack", temp.path())?;
    drop(out);
    fsutil::sync_file(temp.as_file(), false, "fsync pack", temp.path())?;
    let pack_hash = hasher.finalize();
    let name = format!("pack-{}", pack_hash.to_hex());
    let pack_path = dir.join(format!("{name}.pack"));
    let idx_path = dir.join(format!("{name}.idx"));
    temp.persist(&pack_path)
        .map_err(|e| FsError::new("rename pack", &pack_path, e.error))?;
    fsutil::sync_dir(dir)?;
    let idx = index(&ids, &offsets, offset, pack_hash.as_bytes());
    fsutil::write_atomic(&idx_path, tmp, &idx, 0o444)?;
    Ok(idx_path)
}

/// The bytes of a version 2 index.
fn index(ids: &[ObjectId], offsets: &[u64], pack_len: u64, pack_hash: &[u8; 32]) -> Vec<u8> {
    let mut idx = Vec::with_capacity(HEADER as usize + ids.len() * 36 + TRAILER as usize);
    idx.extend_from_slice(IDX_MAGIC);
    idx.extend_from_slice(&(ids.len() as u64).to_le_bytes());
    idx.extend_from_slice(&pack_len.to_le_bytes());
    let mut fanout = [0u32; 256];
    for id in ids {
        fanout[id.as_bytes()[0] as usize] += 1;
    }
    let mut running = 0u32;
    for n in fanout {
        running += n;
        idx.extend_from_slice(&running.to_le_bytes());
    }
    for id in ids {
        idx.extend_from_slice(id.as_bytes());
    }
    let mut large: Vec<u64> = Vec::new();
    for &offset in offsets {
        let small = match u32::try_from(offset) {
            Ok(small) if small & LARGE == 0 => small,
            _ => {
                large.push(offset);
                LARGE | (large.len() - 1) as u32
            }
        };
        idx.extend_from_slice(&small.to_le_bytes());
    }
    for offset in large {
        idx.extend_from_slice(&offset.to_le_bytes());
    }
    let body_hash = blake3::hash(&idx);
    idx.extend_from_slice(pack_hash);
    idx.extend_from_slice(body_hash.as_bytes());
    idx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::object::encode;

    /// A version 1 pack as the writer before issue 25 made it (kept to test reading them).
    fn write_v1(dir: &Path, objects: &[(ObjectId, Vec<u8>)]) -> PathBuf {
        let mut pack = PACK_MAGIC_V1.to_vec();
        let mut idx = IDX_MAGIC_V1.to_vec();
        idx.extend_from_slice(&(objects.len() as u64).to_le_bytes());
        let mut fanout = [0u32; 256];
        for (id, _) in objects {
            fanout[id.as_bytes()[0] as usize] += 1;
        }
        let mut running = 0u32;
        for n in fanout {
            running += n;
            idx.extend_from_slice(&running.to_le_bytes());
        }
        for (id, frame) in objects {
            idx.extend_from_slice(id.as_bytes());
            idx.extend_from_slice(&(pack.len() as u64).to_le_bytes());
            idx.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            pack.extend_from_slice(frame);
        }
        let body = blake3::hash(&idx);
        idx.extend_from_slice(blake3::hash(&pack).as_bytes());
        idx.extend_from_slice(body.as_bytes());
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("pack-1.pack"), pack).unwrap();
        std::fs::write(dir.join("pack-1.idx"), idx).unwrap();
        dir.join("pack-1.idx")
    }

    fn sorted(payloads: &[&[u8]]) -> Vec<(ObjectId, Vec<u8>)> {
        let mut objects: Vec<_> = payloads
            .iter()
            .map(|p| encode(crate::ObjectType::Blob, p).unwrap())
            .collect();
        objects.sort();
        objects
    }

    /// Both versions list the same entries and give back the same frames.
    #[test]
    fn both_versions_read() {
        let dir = tempfile::tempdir().unwrap();
        let objects = sorted(&[b"one", b"two", b"three"]);
        let v1 = Pack::open(&write_v1(&dir.path().join("v1"), &objects)).unwrap();
        let (v2_dir, tmp) = (dir.path().join("v2"), dir.path().join("tmp"));
        std::fs::create_dir_all(&v2_dir).unwrap();
        std::fs::create_dir_all(&tmp).unwrap();
        let v2 = write(&v2_dir, &tmp, None, objects.clone());
        let v2 = Pack::open(&v2.unwrap()).unwrap();
        assert_eq!((v1.version(), v2.version()), (1, 2));
        for pack in [&v1, &v2] {
            pack.verify().unwrap();
            assert!(pack.dictionary().unwrap().is_none());
            let entries = pack.entries().unwrap();
            assert_eq!(entries.len(), 3);
            for ((id, frame), (at, offset, len)) in objects.iter().zip(&entries) {
                assert_eq!(id, at);
                assert_eq!(pack.find(id).unwrap(), Some((*offset, *len)));
                let stored = pack.frame(*offset, *len).unwrap();
                assert_eq!(&pack.zstd_frame(&stored)[..], &frame[..]);
            }
        }
        // Version 2 leaves out each frame's magic number and 8 bytes of index an object.
        let frames: u64 = objects.iter().map(|(_, f)| f.len() as u64 - 4).sum();
        assert_eq!(v2.pack_len(), 8 + 4 + 32 + frames);
        let idx_len = |p: &Pack| std::fs::metadata(p.idx_path()).unwrap().len();
        assert_eq!(idx_len(&v1) - idx_len(&v2), 3 * 8 - 8);
    }

    /// Offsets past 2 GiB go to the table of large offsets and come back from it.
    #[test]
    fn large_offsets_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let objects = sorted(&[b"a", b"b", b"c", b"d"]);
        let ids: Vec<ObjectId> = objects.iter().map(|o| o.0).collect();
        let offsets = [44, 1 << 31, (1 << 31) + 100, (1 << 32) + 7];
        let end = (1 << 32) + 17;
        std::fs::write(dir.path().join("pack-l.pack"), PACK_MAGIC).unwrap();
        let idx = index(&ids, &offsets, end, &[0; 32]);
        // Three of the four offsets are past 2 GiB: three u64s follow the u32s.
        assert_eq!(idx.len() as u64, HEADER + 4 * 36 + 3 * 8 + TRAILER);
        std::fs::write(dir.path().join("pack-l.idx"), &idx).unwrap();
        let pack = Pack::open(&dir.path().join("pack-l.idx")).unwrap();
        let entries = pack.entries().unwrap();
        let got: Vec<(u64, u32)> = entries.iter().map(|e| (e.1, e.2)).collect();
        let want = vec![
            (44, (1 << 31) - 44),
            (1 << 31, 100),
            ((1 << 31) + 100, (1 << 31) - 93),
            ((1 << 32) + 7, 10),
        ];
        assert_eq!(got, want);
        for (id, offset, len) in &entries {
            assert_eq!(pack.find(id).unwrap(), Some((*offset, *len)));
        }
        // A span longer than a frame can be, or running backwards, is placed past any pack.
        assert_eq!(span(0, 1 << 32), (u64::MAX, 0));
        assert_eq!(span(100, 50), (u64::MAX, 0));
    }

    /// An index entry whose length says 4 GiB (found by fuzzing: reads allocated it) is
    /// an error, and nothing that size is allocated; in version 2, an offset out of order
    /// or a large offset that is not there is placed past the pack.
    #[test]
    fn an_entry_reaching_past_the_pack_is_refused_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let objects = sorted(&[b"packed"]);
        let id = objects[0].0;
        let idx_path = write_v1(dir.path(), &objects);
        let mut idx = std::fs::read(&idx_path).unwrap();
        let at = (HEADER_V1 + 32 + 8) as usize;
        idx[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&idx_path, &idx).unwrap();
        let pack = Pack::open(&idx_path).unwrap();
        let (offset, len) = pack.find(&id).unwrap().unwrap();
        assert_eq!(len, u32::MAX);
        let err = pack.frame(offset, len).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("past the pack"), "{err}");
        assert!(pack.verify().is_err());

        let objects = sorted(&[b"one", b"two"]);
        let (v2_dir, tmp) = (dir.path().join("v2"), dir.path().join("tmp"));
        std::fs::create_dir_all(&v2_dir).unwrap();
        std::fs::create_dir_all(&tmp).unwrap();
        let idx_path = write(&v2_dir, &tmp, None, objects.clone()).unwrap();
        let good = std::fs::read(&idx_path).unwrap();
        let offsets = (HEADER + 2 * 32) as usize;
        for bad_offset in [u32::MAX - 1, LARGE | 7, 0] {
            let mut idx = good.clone();
            // The second entry before the first, or naming a large offset that is not there.
            idx[offsets + 4..offsets + 8].copy_from_slice(&bad_offset.to_le_bytes());
            std::fs::write(&idx_path, &idx).unwrap();
            let pack = Pack::open(&idx_path).unwrap();
            for (id, _) in &objects {
                let (offset, len) = pack.find(id).unwrap().unwrap();
                let read = pack
                    .frame(offset, len)
                    .map(|stored| crate::store::object::decode_packed(id, &pack, offset, &stored));
                assert!(!matches!(read, Ok(Ok(_))), "{bad_offset:#x}: {id} reads");
            }
            assert!(pack.verify().is_err(), "{bad_offset:#x}");
        }
    }
}
