//! The frames of a new pack. gc trains a zstd dictionary on a sample of the objects it
//! packs and compresses each object again with it; the pack keeps the dictionary only when
//! that makes it smaller than the frames without one (a pack of a few objects would carry
//! a dictionary larger than what it saves). Every new frame is decoded back and re-hashed
//! before it is written (`PackEncoder`): the loose copies go once the pack is durable.

use std::sync::Arc;

use super::{GcError, GcOptions, GcPhase, Ticker};
use crate::fsutil::FsError;
use crate::par;
use crate::store::dict::{self, Dictionary};
use crate::store::object::{self, ObjectId, ObjectStore, PackEncoder};
use crate::store::pack::Pack;

/// Where an object to pack is now.
pub(super) enum Source {
    /// A loose file's frame, verified by the scan.
    Loose(Vec<u8>),
    /// An entry of one of the packs being rewritten (an index into them).
    Packed { pack: usize, offset: u64, len: u32 },
}

/// The new pack's dictionary, if it has one, and its frames in `objects`' order.
pub(super) type Frames = (Option<Dictionary>, Vec<Vec<u8>>);

/// Objects compressed on one thread with one encoder.
const CHUNK: usize = 1024;

/// The frames of `objects` (sorted by id) for a new pack of `store`, read from their
/// sources (loose, or among `packs`).
pub(super) fn frames(
    store: &ObjectStore,
    objects: &[(ObjectId, Source)],
    packs: &[Arc<Pack>],
    opts: &GcOptions,
) -> Result<Frames, GcError> {
    let sources = Sources { store, packs };
    // Compressing is work for the processor, not the disk: one thread a core.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunks: Vec<&[(ObjectId, Source)]> = objects.chunks(CHUNK).collect();
    if let Some(dictionary) = train(objects, &sources)? {
        let ticker = Ticker::new(opts, GcPhase::Pack, objects.len() as u64);
        let encoded = par::map(&chunks, cores, |chunk| {
            let out = with_dictionary(chunk, &sources, &dictionary);
            ticker.add(chunk.len() as u64);
            out
        });
        let mut frames = Vec::with_capacity(objects.len());
        let (mut with, mut without) = (dictionary.bytes().len() as u64 + 32, 0u64);
        for chunk in encoded {
            for (frame, plain) in chunk? {
                with += frame.len() as u64;
                without += plain;
                frames.push(frame);
            }
        }
        tracing::debug!(
            with,
            without,
            objects = objects.len(),
            "pack: bytes of frames with a dictionary and without"
        );
        if with < without {
            return Ok((Some(dictionary), frames));
        }
    }
    let ticker = Ticker::new(opts, GcPhase::Pack, objects.len() as u64);
    let plain = par::map(&chunks, cores, |chunk| {
        let out = without_dictionary(chunk, &sources);
        ticker.add(chunk.len() as u64);
        out
    });
    let mut frames = Vec::with_capacity(objects.len());
    for chunk in plain {
        frames.extend(chunk?);
    }
    Ok((None, frames))
}

/// A dictionary trained on every `stride`th object small enough to sample, up to the
/// sample budget; `None` when there is too little to learn from.
fn train(objects: &[(ObjectId, Source)], sources: &Sources) -> Result<Option<Dictionary>, GcError> {
    let mut samples = Vec::new();
    let mut bytes = 0;
    for (id, source) in objects.iter().step_by(dict::stride(objects.len())) {
        let canonical = sources.canonical(id, source)?;
        if canonical.len() > dict::SAMPLE_MAX {
            continue;
        }
        bytes += canonical.len();
        samples.push(canonical);
        if bytes >= dict::SAMPLE_BUDGET {
            break;
        }
    }
    Ok(dict::train(&samples).and_then(|trained| Dictionary::new(trained).ok()))
}

/// Each object's frame with `dictionary`, and the bytes its frame would take without one.
fn with_dictionary(
    chunk: &[(ObjectId, Source)],
    sources: &Sources,
    dictionary: &Dictionary,
) -> Result<Vec<(Vec<u8>, u64)>, GcError> {
    let mut encoder = PackEncoder::new(Some(dictionary));
    let mut plain = PackEncoder::new(None);
    let mut out = Vec::with_capacity(chunk.len());
    for (id, source) in chunk {
        let canonical = sources.canonical(id, source)?;
        let frame = encoder.encode(id, &canonical)?;
        let without = match sources.plain_frame_len(source) {
            Some(len) => len,
            // Packed with another dictionary: its size without one is only known by trying.
            None => plain.encode(id, &canonical)?.len() as u64,
        };
        out.push((frame, without));
    }
    Ok(out)
}

/// Each object's frame without a dictionary: the frame it has when it has one (checked by
/// the scan), else compressed again.
fn without_dictionary(
    chunk: &[(ObjectId, Source)],
    sources: &Sources,
) -> Result<Vec<Vec<u8>>, GcError> {
    let mut encoder = PackEncoder::new(None);
    let mut out = Vec::with_capacity(chunk.len());
    for (id, source) in chunk {
        let frame = match source {
            Source::Loose(frame) => frame.clone(),
            Source::Packed { pack, offset, len } if sources.plain_frame_len(source).is_some() => {
                let pack = &sources.packs[*pack];
                pack.zstd_frame(&stored(pack, *offset, *len)?).into_owned()
            }
            Source::Packed { .. } => {
                let canonical = sources.canonical(id, source)?;
                encoder.encode(id, &canonical)?
            }
        };
        out.push(frame);
    }
    Ok(out)
}

/// Where the objects to pack are read from.
struct Sources<'a> {
    store: &'a ObjectStore,
    packs: &'a [Arc<Pack>],
}

impl Sources<'_> {
    /// What an object's frame takes in a pack without a dictionary, when its frame needs
    /// none now (a loose file, a pack without a dictionary): the frame less its magic
    /// number.
    fn plain_frame_len(&self, source: &Source) -> Option<u64> {
        match source {
            Source::Loose(frame) => Some((frame.len() as u64).saturating_sub(4)),
            Source::Packed { pack, len, .. } => {
                let pack = &self.packs[*pack];
                match pack.dictionary() {
                    Ok(None) if pack.version() == 1 => Some((*len as u64).saturating_sub(4)),
                    Ok(None) => Some(*len as u64),
                    _ => None,
                }
            }
        }
    }

    /// The verified canonical bytes of an object to pack (the scan read it as good; that
    /// it no longer is stops gc before the loose copies go).
    fn canonical(&self, id: &ObjectId, source: &Source) -> Result<Vec<u8>, GcError> {
        let canonical = match source {
            Source::Loose(frame) => object::canonical(id, &self.store.path(id), frame)?,
            Source::Packed { pack, offset, len } => {
                let pack = &self.packs[*pack];
                let bytes = stored(pack, *offset, *len)?;
                object::canonical_packed(id, pack, *offset, &bytes)?.0
            }
        };
        Ok(canonical)
    }
}

fn stored(pack: &Pack, offset: u64, len: u32) -> Result<Vec<u8>, GcError> {
    pack.frame(offset, len)
        .map_err(|e| FsError::new("read pack", pack.pack_path(), e).into())
}
