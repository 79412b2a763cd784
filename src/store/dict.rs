//! Zstd dictionaries for packs (DESIGN.md §13: "a pack may carry a zstd dictionary"). gc
//! trains one on a sample of the objects it packs; the pack stores it once, and every frame
//! in that pack is compressed with it. Small objects repeat each other's bytes (the same
//! JSON keys, the same envelope), which a frame of its own cannot exploit and a dictionary
//! can: on 1,000,000 ~200-byte objects a frame falls from 86 to 26 bytes (ARCHITECTURE.md,
//! "Packs").
//!
//! A leaf of the store: the pack format keeps the dictionary, the object codec uses it.

use std::sync::OnceLock;

use zstd::dict::{DecoderDictionary, EncoderDictionary};

/// The largest dictionary gc trains (64 KiB: on the measured homes 16 KiB saved less and
/// 128 KiB no more; ARCHITECTURE.md).
pub const MAX_SIZE: usize = 64 << 10;

/// The largest dictionary a pack may declare: a larger length is corruption, refused
/// before anything that size is allocated.
pub const MAX_STORED: u64 = 1 << 20;

/// At most this many bytes of samples are trained on (4 MiB: about 0.3 s of training).
pub const SAMPLE_BUDGET: usize = 4 << 20;

/// Objects whose canonical bytes are longer than this are not sampled: a dictionary helps
/// small objects, and one large object would take a large share of the budget.
pub const SAMPLE_MAX: usize = 64 << 10;

/// About how many objects are sampled (every `n / SAMPLES`th, in id order).
pub const SAMPLES: usize = 20_000;

/// Objects up to this size (canonical bytes) are compressed with the dictionary at
/// [`SMALL_LEVEL`], larger ones at [`LARGE_LEVEL`]: where the dictionary does most of the
/// work level 3 was 10% smaller than level 1 in the same time, where the object's own
/// content does (a DLQ shard of 3,906 ids, an event batch) level 1 was 8% smaller
/// (ARCHITECTURE.md, "Pack format version 2").
pub const SMALL: usize = 4 << 10;

/// The level of small objects' frames.
pub const SMALL_LEVEL: i32 = 3;

/// The level of large objects' frames (the level of loose objects).
pub const LARGE_LEVEL: i32 = 1;

/// A verified dictionary, prepared for decoding (and, on demand, for encoding).
pub struct Dictionary {
    bytes: Vec<u8>,
    decoder: DecoderDictionary<'static>,
    /// Prepared for compression of small and of large objects.
    encoders: [OnceLock<Result<EncoderDictionary<'static>, String>>; 2],
}

impl std::fmt::Debug for Dictionary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dictionary")
            .field("bytes", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

impl Dictionary {
    /// Prepares `bytes` (a dictionary as zstd's trainer makes it) for decoding.
    pub fn new(bytes: Vec<u8>) -> Result<Dictionary, String> {
        let decoder = DecoderDictionary::try_copy(&bytes)
            .map_err(|e| format!("zstd refuses the dictionary: {e}"))?;
        Ok(Dictionary {
            bytes,
            decoder,
            encoders: [OnceLock::new(), OnceLock::new()],
        })
    }

    /// The dictionary as stored.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Prepared for decompression.
    pub fn decoder(&self) -> &DecoderDictionary<'static> {
        &self.decoder
    }

    /// Prepared for compressing an object of `len` canonical bytes, at the level for its
    /// size (made on first use: readers never need it).
    pub fn encoder_for(&self, len: usize) -> Result<&EncoderDictionary<'static>, String> {
        let (slot, level) = if len <= SMALL {
            (&self.encoders[0], SMALL_LEVEL)
        } else {
            (&self.encoders[1], LARGE_LEVEL)
        };
        slot.get_or_init(|| {
            EncoderDictionary::try_copy(&self.bytes, level)
                .map_err(|e| format!("zstd refuses the dictionary: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
    }
}

/// Which of `n` objects (in id order) to sample: every `stride`th.
pub fn stride(n: usize) -> usize {
    n.div_ceil(SAMPLES).max(1)
}

/// Trains a dictionary on `samples` (canonical bytes); `None` when there is too little to
/// learn from or zstd's trainer gives up. The dictionary is at most [`MAX_SIZE`] and at most
/// an eighth of the samples, so that a small pack does not carry a dictionary larger than
/// what it could save.
pub fn train(samples: &[Vec<u8>]) -> Option<Vec<u8>> {
    let total: usize = samples.iter().map(Vec::len).sum();
    let capacity = (total / 8).min(MAX_SIZE);
    if capacity < 1024 || samples.len() < 16 {
        return None;
    }
    let trained = zstd::dict::from_samples(samples, capacity).ok()?;
    tracing::debug!(
        samples = samples.len(),
        bytes = total,
        dictionary = trained.len(),
        "trained a pack dictionary"
    );
    Some(trained)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_little_to_learn_from_gives_no_dictionary() {
        assert!(train(&[]).is_none());
        let few: Vec<Vec<u8>> = (0..10).map(|i| format!("{i}").into_bytes()).collect();
        assert!(train(&few).is_none());
    }

    #[test]
    fn a_trained_dictionary_is_bounded_and_prepares() {
        let samples: Vec<Vec<u8>> = (0..2000)
            .map(|i| format!("item 40\0{{\"item\":{i},\"error\":\"exit {}\"}}", i % 7).into_bytes())
            .collect();
        let total: usize = samples.iter().map(Vec::len).sum();
        let bytes = train(&samples).unwrap();
        assert!(bytes.len() <= total / 8, "{} of {total}", bytes.len());
        let dict = Dictionary::new(bytes).unwrap();
        assert!(dict.encoder_for(100).is_ok());
        assert!(dict.encoder_for(SMALL + 1).is_ok());
        assert_eq!(stride(1), 1);
        assert_eq!(stride(SAMPLES), 1);
        assert_eq!(stride(SAMPLES * 50), 50);
    }
}
