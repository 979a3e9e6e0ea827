//! Training batches from a token artifact: the token stream is cut into
//! windows of `seq_len + 1` tokens (inputs and shifted targets; documents
//! are packed back to back, separated by their BOS/EOS), and windows are
//! visited in a seeded random order, epoch after epoch.

use babelflow_stage::StageError;

use crate::trainer::{Batch, Examples};
use babelflow_tokens::artifact::{read_index, TokenFile};
use std::path::Path;

pub struct Windows {
    tokens: TokenFile,
    path: std::path::PathBuf,
    seq_len: usize,
    count: usize,
    /// The language most of the stream is in (for validation labels).
    pub lang: String,
    /// Each document's `(first token, tokens, characters)`, in stream
    /// order: what text a span of tokens stands for.
    documents: Vec<(u64, u64, u64)>,
}

#[allow(clippy::len_without_is_empty)] // a Windows is never empty: `open` refuses that
impl Windows {
    /// Opens a token artifact bound as an input: its folder, or any file in
    /// it (`tokens@sw`, `tokens@sw:tokens.bin`, `tokens@sw:stats.json`).
    pub fn open_artifact(path: &Path, seq_len: usize) -> Result<Self, StageError> {
        let bin = if path.is_dir() {
            path.join("tokens.bin")
        } else {
            path.with_file_name("tokens.bin")
        };
        Self::open(&bin, seq_len)
    }

    pub fn open(bin: &Path, seq_len: usize) -> Result<Self, StageError> {
        let tokens = TokenFile::open(bin)?;
        let count = tokens.len().saturating_sub(1) / seq_len;
        if count == 0 {
            return Err(StageError::input(
                bin,
                None,
                format!("{} tokens are fewer than one sequence of {} + 1", tokens.len(), seq_len),
            ));
        }
        let index = read_index(&bin.with_file_name("index.parquet"))?;
        let mut per_lang = std::collections::BTreeMap::<String, u64>::new();
        for d in &index {
            *per_lang.entry(d.lang.clone()).or_default() += d.n_tokens;
        }
        let lang = per_lang
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(l, _)| l)
            .unwrap_or_else(|| "und".into());
        let mut documents: Vec<(u64, u64, u64)> = index.iter().map(|d| (d.offset, d.n_tokens, d.n_chars)).collect();
        documents.sort_unstable();
        Ok(Windows {
            tokens,
            path: bin.to_path_buf(),
            seq_len,
            count,
            lang,
            documents,
        })
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    pub fn vocab_size(&self) -> u32 {
        self.tokens.header.vocab_size
    }

    /// blake3 of the tokenizer.json the ids were made with.
    pub fn tokenizer_hash(&self) -> &[u8; 32] {
        &self.tokens.header.tokenizer_hash
    }

    /// The tokens.bin these windows come from (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Windows `indices` as one batch: inputs are each window's first
    /// `seq_len` ids, targets the same shifted by one.
    pub fn batch(&self, indices: &[usize]) -> Batch {
        let t = self.seq_len;
        let mut inputs = Vec::with_capacity(indices.len() * t);
        let mut targets = Vec::with_capacity(indices.len() * t);
        for &i in indices {
            let w = self.window(i);
            inputs.extend(w[..t].iter().map(|&id| id as i64));
            targets.extend(w[1..].iter().map(|&id| id as i64));
        }
        Batch {
            inputs,
            targets,
            weights: None,
            rows: indices.len(),
            cols: t,
            tokens: indices.len() * t,
        }
    }

    /// Characters of text behind the targets of windows `0..n` (tokens
    /// `1..=n·seq_len` of the stream): whole documents count their
    /// characters, a document the span cuts counts in proportion to its
    /// tokens inside. Divides a validation loss into bits per character,
    /// the one measure two tokenizers of the same text share.
    pub fn chars_of_first(&self, n: usize) -> f64 {
        let (from, to) = (1u64, 1 + (n.min(self.count) * self.seq_len) as u64);
        self.documents
            .iter()
            .filter(|(_, tokens, _)| *tokens > 0)
            .map(|&(start, tokens, chars)| {
                let inside = (start + tokens).min(to).saturating_sub(start.max(from));
                chars as f64 * inside as f64 / tokens as f64
            })
            .sum()
    }

    /// Window `i`: `seq_len + 1` ids.
    pub fn window(&self, i: usize) -> Vec<u32> {
        let start = i * self.seq_len;
        self.tokens.slice(start, start + self.seq_len + 1)
    }
}

impl Examples for Windows {
    fn len(&self) -> usize {
        self.count
    }
    fn batch(&self, indices: &[usize]) -> Batch {
        Windows::batch(self, indices)
    }
}

/// A reproducible order of window indices: epoch `e` is a fresh shuffle
/// seeded by (seed, e), so position `k` of the whole run is known without
/// replaying it (what a resumed run needs). The current epoch's permutation
/// is kept, so a lookup costs O(1) within an epoch.
pub struct Order {
    seed: u64,
    windows: usize,
    epoch: Option<usize>,
    perm: Vec<usize>,
}

impl Order {
    pub fn new(windows: usize, seed: u64) -> Self {
        Order {
            seed,
            windows,
            epoch: None,
            perm: Vec::new(),
        }
    }

    pub fn at(&mut self, position: usize) -> usize {
        let epoch = position / self.windows;
        if self.epoch != Some(epoch) {
            self.perm = (0..self.windows).collect();
            let mut state = self.seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xd1b5_4a32_d192_ed03;
            for i in (1..self.windows).rev() {
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                self.perm.swap(i, (z % (i as u64 + 1)) as usize);
            }
            self.epoch = Some(epoch);
        }
        self.perm[position % self.windows]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_epoch_visits_every_window_once_and_orders_differ() {
        let n = 10;
        let mut order = Order::new(n, 3);
        let mut first: Vec<usize> = (0..n).map(|p| order.at(p)).collect();
        let second: Vec<usize> = (n..2 * n).map(|p| order.at(p)).collect();
        assert_ne!(first, second);
        first.sort();
        assert_eq!(first, (0..n).collect::<Vec<_>>());
        assert_eq!(
            Order::new(n, 3).at(17),
            order.at(17),
            "a fresh order agrees at any position"
        );
    }
}
