//! The `tokenize` kind: corpus Parquet + HF tokenizer.json → token artifact
//! (`tokens.bin` + `index.parquet`), fertility per language in `stats.json`,
//! and a copy of the tokenizer so downstream stages know what the ids mean.

use babelflow_corpus::{read_corpus, Document};
use babelflow_stage::{InputSpec, ParamSpec, ParamType, Params, StageContext, StageError, StageKind};
use serde_json::json;

use crate::artifact::{DocEntry, IndexWriter, TokenWriter};
use crate::fertility::FertilityCounter;
use crate::hf::{hex, LoadedTokenizer};

pub struct Tokenize;

const PARAMS: &[ParamSpec] = &[
    ParamSpec::with_default(
        "add_bos",
        ParamType::Bool,
        "true",
        "put the BOS token before each document",
    ),
    ParamSpec::with_default(
        "add_eos",
        ParamType::Bool,
        "true",
        "put the EOS token after each document",
    ),
    ParamSpec::optional(
        "bos_token",
        ParamType::Str,
        "BOS token text (default: <s>, <|begin_of_text|> or <bos>, whichever the tokenizer has)",
    ),
    ParamSpec::optional(
        "eos_token",
        ParamType::Str,
        "EOS token text (default: </s>, <|end_of_text|>, <eos> or <|endoftext|>)",
    ),
    ParamSpec::with_default(
        "batch_docs",
        ParamType::Int,
        "1024",
        "documents encoded per parallel batch (bounds memory)",
    ),
];

const INPUTS: &[InputSpec] = &[
    InputSpec {
        name: "corpus",
        required: true,
        many: true,
        doc: "corpus Parquet (from `ingest`)",
    },
    InputSpec {
        name: "tokenizer",
        required: true,
        many: false,
        doc: "an HF tokenizer.json (a file, or `train-tokenizer` / `extend-vocab` output)",
    },
];

impl StageKind for Tokenize {
    fn name(&self) -> &'static str {
        "tokenize"
    }
    fn code_version(&self) -> &'static str {
        "1"
    }
    fn summary(&self) -> &'static str {
        "corpus + tokenizer.json → memory-mappable token ids, document index, fertility per language"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn inputs(&self) -> &'static [InputSpec] {
        INPUTS
    }
    fn outputs(&self, _params: &Params) -> Vec<String> {
        ["tokens.bin", "index.parquet", "stats.json", "tokenizer.json"]
            .map(String::from)
            .to_vec()
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let p = ctx.params;
        let tokenizer_path = &ctx.single_input("tokenizer")?.path;
        let tok = LoadedTokenizer::load(tokenizer_path)?;
        let bos = if p.bool("add_bos")? {
            Some(tok.bos_id(p.opt_str("bos_token")?)?)
        } else {
            None
        };
        let eos = if p.bool("add_eos")? {
            Some(tok.eos_id(p.opt_str("eos_token")?)?)
        } else {
            None
        };
        let batch_docs = p.usize("batch_docs")?.max(1);

        let mut tokens = TokenWriter::create(&ctx.output("tokens.bin"), tok.vocab_size, tok.hash)?;
        let mut index = IndexWriter::create(&ctx.output("index.parquet"))?;
        let mut fertility = FertilityCounter::default();
        let mut batch: Vec<Document> = Vec::with_capacity(batch_docs);
        let mut docs = 0u64;

        let mut encode_batch = |batch: &mut Vec<Document>,
                                tokens: &mut TokenWriter,
                                index: &mut IndexWriter,
                                fertility: &mut FertilityCounter|
         -> Result<(), StageError> {
            ctx.check_cancelled()?;
            let texts: Vec<&str> = batch.iter().map(|d| d.text.as_str()).collect();
            let encodings = tok
                .tokenizer
                .encode_batch(texts, false)
                .map_err(|e| StageError::failed(format!("tokenizer failed: {e}")))?;
            for (doc, enc) in batch.iter().zip(&encodings) {
                let text_ids = enc.get_ids();
                fertility.add(&doc.lang, &doc.text, text_ids, &tok.is_byte_fallback);
                let offset = tokens.tokens_written();
                let mut ids = Vec::with_capacity(text_ids.len() + 2);
                ids.extend(bos);
                ids.extend_from_slice(text_ids);
                ids.extend(eos);
                tokens.write(&ids)?;
                index.push(DocEntry {
                    id: doc.id.clone(),
                    lang: doc.lang.clone(),
                    offset,
                    n_tokens: ids.len() as u64,
                    n_chars: doc.text.chars().count() as u64,
                    n_bytes: doc.text.len() as u64,
                })?;
            }
            docs += batch.len() as u64;
            ctx.progress(
                docs,
                None,
                &format!("{docs} documents, {} tokens", tokens.tokens_written()),
            );
            batch.clear();
            Ok(())
        };

        for item in ctx.input("corpus") {
            read_corpus(&item.path, &mut |doc| {
                batch.push(doc);
                if batch.len() >= batch_docs {
                    encode_batch(&mut batch, &mut tokens, &mut index, &mut fertility)?;
                }
                Ok(())
            })?;
        }
        encode_batch(&mut batch, &mut tokens, &mut index, &mut fertility)?;
        let header = tokens.finish()?;
        index.finish()?;
        std::fs::copy(tokenizer_path, ctx.output("tokenizer.json")).map_err(|e| StageError::io(tokenizer_path, e))?;

        let languages = fertility.finish();
        let stats = json!({
            "documents": docs,
            "tokens": header.n_tokens,
            "vocab_size": tok.vocab_size,
            "id_bytes": header.id_bytes,
            "tokenizer_hash": hex(&tok.hash),
            "bos": bos,
            "eos": eos,
            "languages": languages,
        });
        ctx.write_json("stats.json", &stats)?;
        ctx.note("tokens", header.n_tokens);
        ctx.log(&format!("{docs} documents → {} tokens", header.n_tokens));
        Ok(())
    }
}
