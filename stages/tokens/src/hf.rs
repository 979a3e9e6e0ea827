//! Loading an HF `tokenizer.json` with errors a user can act on, and the
//! facts about it the stages need (hash, BOS/EOS, byte-fallback ids).

use std::path::Path;
use std::str::FromStr;

use babelflow_stage::StageError;
use tokenizers::Tokenizer;

pub struct LoadedTokenizer {
    pub tokenizer: Tokenizer,
    /// blake3 of the file's bytes: token artifacts record it so ids from
    /// different tokenizers are never mixed.
    pub hash: [u8; 32],
    pub vocab_size: u32,
    /// `is_byte_fallback[id]`: the token is a `<0xNN>` byte piece.
    pub is_byte_fallback: Vec<bool>,
}

/// BOS/EOS spellings of the LLaMA family, tried in order.
const BOS_NAMES: &[&str] = &["<s>", "<|begin_of_text|>", "<bos>"];
const EOS_NAMES: &[&str] = &["</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>"];

impl LoadedTokenizer {
    pub fn load(path: &Path) -> Result<Self, StageError> {
        let bytes = std::fs::read(path).map_err(|e| StageError::io(path, e))?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| StageError::input(path, None, "not a tokenizer.json: the file is not UTF-8 text"))?;
        let tokenizer = Tokenizer::from_str(text)
            .map_err(|e| StageError::input(path, None, format!("not a Hugging Face tokenizer.json: {e}")))?;
        Ok(Self::from_tokenizer(tokenizer, *blake3::hash(&bytes).as_bytes()))
    }

    /// The tokenizer a model is read with: the one bound by the recipe, else
    /// the `tokenizer.json` in the model folder. Returns its path too.
    pub fn for_model(model_dir: &Path, bound: Option<&Path>) -> Result<(std::path::PathBuf, Self), StageError> {
        let path = bound.map_or_else(|| model_dir.join("tokenizer.json"), Path::to_path_buf);
        if !path.is_file() {
            return Err(StageError::input(
                model_dir,
                None,
                "the model folder has no tokenizer.json: bind one under `needs: { tokenizer: ... }`",
            ));
        }
        let tokenizer = Self::load(&path)?;
        Ok((path, tokenizer))
    }

    pub fn from_tokenizer(tokenizer: Tokenizer, hash: [u8; 32]) -> Self {
        let vocab_size = tokenizer.get_vocab_size(true) as u32;
        let mut is_byte_fallback = vec![false; vocab_size as usize];
        for (token, id) in tokenizer.get_vocab(true) {
            if is_byte_piece(&token) {
                if let Some(slot) = is_byte_fallback.get_mut(id as usize) {
                    *slot = true;
                }
            }
        }
        LoadedTokenizer {
            tokenizer,
            hash,
            vocab_size,
            is_byte_fallback,
        }
    }

    fn special(&self, wanted: Option<&str>, names: &[&str], what: &str) -> Result<u32, StageError> {
        let candidates: Vec<&str> = wanted.map(|w| vec![w]).unwrap_or_else(|| names.to_vec());
        candidates
            .iter()
            .find_map(|n| self.tokenizer.token_to_id(n))
            .ok_or_else(|| {
                StageError::failed(format!(
                    "the tokenizer has no {what} token (looked for {}); set `{}_token` or turn `add_{}` off",
                    candidates.join(", "),
                    what.to_lowercase(),
                    what.to_lowercase()
                ))
            })
    }

    pub fn bos_id(&self, wanted: Option<&str>) -> Result<u32, StageError> {
        self.special(wanted, BOS_NAMES, "BOS")
    }

    pub fn eos_id(&self, wanted: Option<&str>) -> Result<u32, StageError> {
        self.special(wanted, EOS_NAMES, "EOS")
    }
}

/// `<0x0A>`-style byte pieces of byte-fallback BPE (LLaMA-1/2, Mistral).
pub fn is_byte_piece(token: &str) -> bool {
    let b = token.as_bytes();
    b.len() == 6 && b.starts_with(b"<0x") && b[5] == b'>' && b[3].is_ascii_hexdigit() && b[4].is_ascii_hexdigit()
}

pub fn hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_folder_without_a_tokenizer_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = LoadedTokenizer::for_model(dir.path(), None).err().unwrap().to_string();
        assert!(err.starts_with(&dir.path().display().to_string()), "{err}");
        assert!(
            err.contains("no tokenizer.json") && err.contains("needs: { tokenizer"),
            "{err}"
        );
    }
}
