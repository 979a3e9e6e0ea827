//! Loading an HF `tokenizer.json` with errors a user can act on, and the
//! facts about it the stages need (hash, byte-fallback ids). Its special
//! tokens are `specials`' job.

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

impl LoadedTokenizer {
    pub fn load(path: &Path) -> Result<Self, StageError> {
        let bytes = std::fs::read(path).map_err(|e| StageError::io(path, e))?;
        if bytes.starts_with(b"GGUF") {
            return Err(StageError::input(
                path,
                None,
                "a GGUF model file, not a tokenizer.json: bring it in with an `import-model` stage and bind \
                 `tokenizer:` to that stage (a model folder stands for its tokenizer)",
            ));
        }
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| StageError::input(path, None, "not a tokenizer.json: the file is not UTF-8 text"))?;
        let tokenizer = Tokenizer::from_str(text)
            .map_err(|e| StageError::input(path, None, format!("not a Hugging Face tokenizer.json: {e}")))?;
        Ok(Self::from_tokenizer(tokenizer, *blake3::hash(&bytes).as_bytes()))
    }

    /// Ids of `text` without special tokens.
    pub fn ids(&self, text: &str) -> Result<Vec<u32>, StageError> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| StageError::failed(format!("tokenizing: {e}")))
    }

    /// The tokenizer a model is read with: the one bound by the recipe, else
    /// the `tokenizer.json` in the model folder. Returns its path too.
    pub fn for_model(model_dir: &Path, bound: Option<&Path>) -> Result<(std::path::PathBuf, Self), StageError> {
        let own = model_dir.join("tokenizer.json");
        let path = bound.map_or_else(|| own.clone(), Path::to_path_buf);
        if !path.is_file() {
            return Err(StageError::input(
                model_dir,
                None,
                "the model folder has no tokenizer.json: bind one under `needs: { tokenizer: ... }`",
            ));
        }
        let tokenizer = Self::load(&path)?;
        if bound.is_some() && own.is_file() {
            ensure_model_reads(model_dir, &tokenizer.hash, &path, "the bound tokenizer")?;
        }
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
}

/// `<0x0A>`-style byte pieces of byte-fallback BPE (LLaMA-1/2, Mistral).
pub fn is_byte_piece(token: &str) -> bool {
    let b = token.as_bytes();
    b.len() == 6 && b.starts_with(b"<0x") && b[5] == b'>' && b[3].is_ascii_hexdigit() && b[4].is_ascii_hexdigit()
}

/// Refuses ids made by another tokenizer than the one a model folder ships
/// (`model_dir/tokenizer.json`, compared by blake3 of the file, which is what
/// a token artifact's header records). Same vocabulary size is not enough:
/// the model would learn or be scored on ids that mean other pieces, and
/// would ship a tokenizer that does not match what it learnt. A folder
/// without a tokenizer.json cannot be checked and passes.
pub fn ensure_model_reads(
    model_dir: &Path,
    ids_hash: &[u8; 32],
    ids_path: &Path,
    what: &str,
) -> Result<(), StageError> {
    let own = model_dir.join("tokenizer.json");
    let Ok(bytes) = std::fs::read(&own) else {
        return Ok(());
    };
    let model_hash = *blake3::hash(&bytes).as_bytes();
    if &model_hash == ids_hash {
        return Ok(());
    }
    Err(StageError::input(
        ids_path,
        None,
        format!(
            "{what} come from another tokenizer than the model's (tokenizer blake3 {}… here, {}… in the model's \
             tokenizer.json): tokenize with the tokenizer the model ships, or give the model that tokenizer \
             (`init-model`, `resize-vocab`)",
            &hex(ids_hash)[..12],
            &hex(&model_hash)[..12]
        ),
    ))
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
