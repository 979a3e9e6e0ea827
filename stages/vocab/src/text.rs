//! The text the inits learn from, as token ids: target-language documents
//! for `focus`, sentence pairs for `aligned`.

use std::path::Path;

use babelflow_corpus::read_corpus;
use babelflow_corpus::table::{cell, for_each_batch};
use babelflow_stage::StageError;
use tokenizers::Tokenizer;

/// One sentence pair: source-side ids (the model's own tokenizer) and
/// target-side ids (the extended one).
pub type SentencePair = (Vec<u32>, Vec<u32>);

/// Documents encoded per call: the tokenizer spreads a batch over threads.
const BATCH: usize = 256;

fn encode(tokenizer: &Tokenizer, texts: Vec<String>, path: &Path) -> Result<Vec<Vec<u32>>, StageError> {
    let encodings = tokenizer
        .encode_batch(texts, false)
        .map_err(|e| StageError::input(path, None, format!("tokenizing: {e}")))?;
    Ok(encodings.into_iter().map(|e| e.get_ids().to_vec()).collect())
}

/// Every document of the corpus tables at `paths`, as ids of `tokenizer`.
pub fn documents(paths: &[&Path], tokenizer: &Tokenizer) -> Result<Vec<Vec<u32>>, StageError> {
    let mut out = Vec::new();
    for path in paths {
        let mut pending = Vec::new();
        read_corpus(path, &mut |doc| {
            pending.push(doc.text);
            if pending.len() == BATCH {
                out.extend(encode(tokenizer, std::mem::take(&mut pending), path)?);
            }
            Ok(())
        })?;
        out.extend(encode(tokenizer, pending, path)?);
    }
    Ok(out)
}

/// Sentence pairs `(source ids, target ids)` from tables with `source` and
/// `target` text columns, or from `ingest-instructions` tables (the
/// instruction and its input are the source, the output the target).
/// Rows with an empty side are skipped.
pub fn pairs(
    paths: &[&Path],
    source_tokenizer: &Tokenizer,
    target_tokenizer: &Tokenizer,
) -> Result<Vec<SentencePair>, StageError> {
    let expected = "parallel text: a table with `source` and `target` text columns, or an ingest-instructions table";
    let mut out = Vec::new();
    for path in paths {
        let (mut sources, mut targets) = (Vec::new(), Vec::new());
        for_each_batch(path, expected, &mut |b| {
            let (source, target) = match (b.text("source"), b.text("target")) {
                (Ok(s), Ok(t)) => (
                    (0..b.num_rows()).map(|r| cell(s, r)).collect::<Vec<_>>(),
                    (0..b.num_rows()).map(|r| cell(t, r)).collect::<Vec<_>>(),
                ),
                _ => {
                    let (instruction, input, output) = match (b.text("instruction"), b.text("input"), b.text("output"))
                    {
                        (Ok(i), Ok(n), Ok(o)) => (i, n, o),
                        _ => {
                            return Err(
                                b.error("no `source` and `target` columns, nor `instruction`, `input`, `output`")
                            )
                        }
                    };
                    (
                        (0..b.num_rows())
                            .map(|r| {
                                format!("{}\n{}", cell(instruction, r), cell(input, r))
                                    .trim()
                                    .to_string()
                            })
                            .collect(),
                        (0..b.num_rows()).map(|r| cell(output, r)).collect(),
                    )
                }
            };
            for (s, t) in source.into_iter().zip(target) {
                if !s.trim().is_empty() && !t.trim().is_empty() {
                    sources.push(s);
                    targets.push(t);
                }
            }
            Ok(())
        })?;
        let source = encode(source_tokenizer, sources, path)?;
        let target = encode(target_tokenizer, targets, path)?;
        out.extend(source.into_iter().zip(target));
    }
    Ok(out)
}
