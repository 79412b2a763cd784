//! Packs (DESIGN.md §10): many objects in one file, found through a sorted index, so that
//! a home with millions of objects is a few files instead of millions.
//!
//! `objects/pack/pack-<id>.pack`: `PRODPACK`, then the objects' frames exactly as their
//! loose files held them (one zstd frame each: nothing is re-compressed), back to back.
//!
//! `objects/pack/pack-<id>.idx`: `PRODIDX1`; the object count (u64 LE); a fan-out table
//! of 256 u32 LE (entry `b`: how many ids begin with a byte ≤ `b`); per object, in id
//! order, its id (32 bytes), offset (u64 LE) and length (u32 LE) in the pack; then the
//! BLAKE3 of the pack file and the BLAKE3 of everything before it in the index. `<id>` is
//! the BLAKE3 of the sorted ids.
//!
//! A lookup reads the fan-out bounds of the id's first byte and binary-searches the entries
//! with positioned reads: O(log n) small reads, the index is never loaded whole. Every
//! object read from a pack is decoded and re-hashed like a loose one. An index is renamed
//! into place only after its pack is durable, so a pack without an index is not a pack
//! (gc removes it).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::fsutil::{self, FsError, IoContext};
use crate::store::id::ObjectId;

const PACK_MAGIC: &[u8; 8] = b"PRODPACK";
const IDX_MAGIC: &[u8; 8] = b"PRODIDX1";
const HEADER: u64 = 8 + 8 + 256 * 4;
const ENTRY: u64 = 32 + 8 + 4;
const TRAILER: u64 = 64;

/// One index entry: an object's id, and its frame's offset and length in the pack.
pub type Entry = (ObjectId, u64, u32);

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
}

impl Pack {
    /// Opens the pack whose index is `idx_path`, checking the index's shape (its size, its
    /// fan-out table); the checksums are for [`Pack::verify`].
    pub fn open(idx_path: &Path) -> Result<Pack, String> {
        let pack_path = idx_path.with_extension("pack");
        let idx = File::open(idx_path).map_err(|e| format!("cannot open: {e}"))?;
        let pack = File::open(&pack_path).map_err(|e| format!("its pack: {e}"))?;
        let mut head = vec![0u8; HEADER as usize];
        idx.read_exact_at(&mut head, 0)
            .map_err(|_| "the index is shorter than its header".to_owned())?;
        if &head[..8] != IDX_MAGIC {
            return Err("not a pack index (bad magic)".into());
        }
        let count = u64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
        let fanout: Vec<u32> = head[16..]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        let len = idx.metadata().map_err(|e| e.to_string())?.len();
        let want = count
            .checked_mul(ENTRY)
            .and_then(|n| n.checked_add(HEADER + TRAILER));
        if want != Some(len) {
            return Err(format!("the index is {len} bytes, its count says {want:?}"));
        }
        if fanout.windows(2).any(|w| w[0] > w[1]) || fanout.last().copied() != Some(count as u32) {
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

    fn entry(&self, i: u64) -> io::Result<Entry> {
        let mut buf = [0u8; ENTRY as usize];
        self.idx.read_exact_at(&mut buf, HEADER + i * ENTRY)?;
        let mut id = [0u8; 32];
        id.copy_from_slice(&buf[..32]);
        let offset = u64::from_le_bytes(buf[32..40].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(buf[40..44].try_into().unwrap_or_default());
        Ok((ObjectId::from_bytes(id), offset, len))
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
            let (at, offset, len) = self.entry(mid)?;
            match at.cmp(id) {
                std::cmp::Ordering::Equal => return Ok(Some((offset, len))),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Ok(None)
    }

    /// The frame stored at `offset`.
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

    /// Every entry, in id order (the whole index is read, in one read).
    pub fn entries(&self) -> io::Result<Vec<Entry>> {
        let mut table = vec![0u8; (self.count * ENTRY) as usize];
        self.idx.read_exact_at(&mut table, HEADER)?;
        Ok(table
            .chunks_exact(ENTRY as usize)
            .map(|e| {
                let mut id = [0u8; 32];
                id.copy_from_slice(&e[..32]);
                let offset = u64::from_le_bytes(e[32..40].try_into().unwrap_or_default());
                let len = u32::from_le_bytes(e[40..44].try_into().unwrap_or_default());
                (ObjectId::from_bytes(id), offset, len)
            })
            .collect())
    }

    /// The ids whose hex starts with `prefix` (at least two hex digits).
    pub fn with_prefix(&self, prefix: &str) -> io::Result<Vec<ObjectId>> {
        let Ok(first) = u8::from_str_radix(&prefix[..2], 16) else {
            return Ok(Vec::new());
        };
        let (lo, hi) = self.bucket(first);
        let mut out = Vec::new();
        for i in lo..hi {
            let (id, _, _) = self.entry(i)?;
            if id.to_string().starts_with(prefix) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Checks both checksums and that the entries are sorted, unique and inside the pack.
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
        let mut last: Option<ObjectId> = None;
        for i in 0..self.count {
            let (id, offset, len) = self.entry(i).map_err(|e| e.to_string())?;
            if last.is_some_and(|l| l >= id) {
                return Err(format!("entry {i} ({id}) is out of order"));
            }
            if offset < PACK_MAGIC.len() as u64 || offset + len as u64 > pack_len {
                return Err(format!(
                    "entry {i} ({id}) points outside the pack at offset {offset}"
                ));
            }
            last = Some(id);
        }
        Ok(())
    }
}

/// Writes a pack of `objects` (sorted by id, no duplicates: `(id, frame)`) into `dir`
/// through a temp file in `tmp`: the pack durably first, then its index. Returns the
/// index's path.
pub fn write(
    dir: &Path,
    tmp: &Path,
    objects: impl IntoIterator<Item = (ObjectId, Vec<u8>)>,
) -> Result<PathBuf, FsError> {
    std::fs::create_dir_all(dir).at("create pack directory", dir)?;
    std::fs::create_dir_all(tmp).at("create temp directory", tmp)?;
    let temp = tempfile::Builder::new()
        .prefix("pack-")
        .suffix(".tmp")
        .tempfile_in(tmp)
        .at("create temp pack", tmp)?;
    let mut out = io::BufWriter::with_capacity(1 << 20, temp.as_file());
    let mut hasher = blake3::Hasher::new();
    let mut names = blake3::Hasher::new();
    let mut entries: Vec<Entry> = Vec::new();
    let mut offset = PACK_MAGIC.len() as u64;
    out.write_all(PACK_MAGIC).at("write pack", temp.path())?;
    hasher.update(PACK_MAGIC);
    for (id, frame) in objects {
        out.write_all(&frame).at("write pack", temp.path())?;
        hasher.update(&frame);
        names.update(id.as_bytes());
        entries.push((id, offset, frame.len() as u32));
        offset += frame.len() as u64;
    }
    out.flush().at("write pack", temp.path())?;
    drop(out);
    fsutil::sync_file(temp.as_file(), false, "fsync pack", temp.path())?;
    let name = format!("pack-{}", names.finalize().to_hex());
    let pack_path = dir.join(format!("{name}.pack"));
    let idx_path = dir.join(format!("{name}.idx"));
    temp.persist(&pack_path)
        .map_err(|e| FsError::new("rename pack", &pack_path, e.error))?;
    fsutil::sync_dir(dir)?;
    let mut idx = Vec::with_capacity((HEADER + entries.len() as u64 * ENTRY + TRAILER) as usize);
    idx.extend_from_slice(IDX_MAGIC);
    idx.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    let mut fanout = [0u32; 256];
    for (id, _, _) in &entries {
        fanout[id.as_bytes()[0] as usize] += 1;
    }
    let mut running = 0u32;
    for n in fanout {
        running += n;
        idx.extend_from_slice(&running.to_le_bytes());
    }
    for (id, offset, len) in &entries {
        idx.extend_from_slice(id.as_bytes());
        idx.extend_from_slice(&offset.to_le_bytes());
        idx.extend_from_slice(&len.to_le_bytes());
    }
    let body_hash = blake3::hash(&idx);
    idx.extend_from_slice(hasher.finalize().as_bytes());
    idx.extend_from_slice(body_hash.as_bytes());
    fsutil::write_atomic(&idx_path, tmp, &idx, 0o444)?;
    Ok(idx_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An index entry whose length says 4 GiB (found by fuzzing: reads allocated it) is
    /// an error, and nothing that size is allocated.
    #[test]
    fn an_entry_reaching_past_the_pack_is_refused_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let (id, frame) = crate::store::object::encode(crate::ObjectType::Blob, b"packed").unwrap();
        let idx_path = write(dir.path(), &dir.path().join("tmp"), [(id, frame.clone())]).unwrap();
        let mut idx = std::fs::read(&idx_path).unwrap();
        let at = (HEADER + 32 + 8) as usize;
        idx[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&idx_path, &idx).unwrap();
        let pack = Pack::open(&idx_path).unwrap();
        let (offset, len) = pack.find(&id).unwrap().unwrap();
        assert_eq!(len, u32::MAX);
        let err = pack.frame(offset, len).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("past the pack"), "{err}");
        assert!(pack.verify().is_err());
    }
}
