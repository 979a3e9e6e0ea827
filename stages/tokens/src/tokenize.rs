//! The `tokenize` kind: corpus Parquet + HF tokenizer.json → token artifact
//! (`tokens.bin` + `index.parquet`), fertility per language in `stats.json`,
//! and a copy of the tokenizer so downstream stages know what the ids mean.

use babelflow_corpus::{read_corpus, Document};
use babelflow_stage::{InputSpec, ParamSpec, ParamType, Params, StageContext, StageError, StageKind};
use serde_json::json;

use crate::artifact::{DocEntry, IndexWriter, TokenWriter};
use crate::fertility::FertilityCounter;
use crate::hf::{hex, LoadedTokenizer};
use crate::specials::{Overrides, Specials};

pub struct Tokenize;

/// Reading, encoding and writing overlap: a reader thread decodes Parquet
/// batches, the calling thread encodes them on all cores (the tokenizers
/// crate's rayon pool), and a writer thread counts fertility and appends ids
/// and index rows. Run one after another, the reading and writing left the
/// cores idle for a tenth of the time.
struct Pipeline<'a> {
    ctx: &'a StageContext<'a>,
    tok: &'a LoadedTokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    batch_docs: usize,
}

struct Written {
    tokens: TokenWriter,
    index: IndexWriter,
    fertility: FertilityCounter,
    docs: u64,
}

/// Batches in flight between two threads: enough to hide a slow batch,
/// few enough to keep memory bounded.
const IN_FLIGHT: usize = 2;

impl Pipeline<'_> {
    fn run(&self, tokens: TokenWriter, index: IndexWriter) -> Result<Written, StageError> {
        let (doc_tx, doc_rx) = crossbeam_channel::bounded::<Vec<Document>>(IN_FLIGHT);
        let (enc_tx, enc_rx) = crossbeam_channel::bounded::<(Vec<Document>, Vec<Vec<u32>>)>(IN_FLIGHT);
        std::thread::scope(|scope| {
            let reader = scope.spawn(move || self.read(doc_tx));
            let writer = scope.spawn(move || self.write(enc_rx, tokens, index));
            let encoded = self.encode(doc_rx, enc_tx);
            let read = reader
                .join()
                .unwrap_or_else(|_| Err(StageError::failed("the corpus reader panicked")));
            let written = writer
                .join()
                .unwrap_or_else(|_| Err(StageError::failed("the token writer panicked")));
            // A part whose neighbour hung up stops quietly (Ok); so any error
            // here is a cause, not a consequence.
            read?;
            encoded?;
            written
        })
    }

    fn read(&self, out: crossbeam_channel::Sender<Vec<Document>>) -> Result<(), StageError> {
        let mut batch = Vec::with_capacity(self.batch_docs);
        let mut bytes = 0usize;
        // Set when the encoder hung up (it failed, or the writer did): the
        // reader stops, and the error to report is theirs.
        let mut hung_up = false;
        for item in self.ctx.input("corpus") {
            let read = read_corpus(&item.path, &mut |doc| {
                bytes += doc.text.len();
                batch.push(doc);
                if batch.len() >= self.batch_docs || bytes >= BATCH_BYTES {
                    bytes = 0;
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(self.batch_docs));
                    if out.send(full).is_err() {
                        hung_up = true;
                        return Err(StageError::Cancelled);
                    }
                }
                Ok(())
            });
            match read {
                Err(_) if hung_up => return Ok(()),
                other => other?,
            }
        }
        if !batch.is_empty() {
            // A failed send means the encoder hung up: its error is reported.
            let _ = out.send(batch);
        }
        Ok(())
    }

    fn encode(
        &self,
        input: crossbeam_channel::Receiver<Vec<Document>>,
        out: crossbeam_channel::Sender<(Vec<Document>, Vec<Vec<u32>>)>,
    ) -> Result<(), StageError> {
        for batch in input {
            self.ctx.check_cancelled()?;
            let texts: Vec<&str> = batch.iter().map(|d| d.text.as_str()).collect();
            let encodings = self
                .tok
                .tokenizer
                .encode_batch(texts, false)
                .map_err(|e| StageError::failed(format!("tokenizer failed: {e}")))?;
            // Only the ids travel on. An encoding holds a string per token:
            // freed here, on the thread that waits for the pool anyway, they
            // do not contend for the allocator with the pool's threads.
            let ids: Vec<Vec<u32>> = encodings.into_iter().map(|e| e.get_ids().to_vec()).collect();
            if out.send((batch, ids)).is_err() {
                // The writer failed; its error is the one to report.
                return Ok(());
            }
        }
        Ok(())
    }

    fn write(
        &self,
        input: crossbeam_channel::Receiver<(Vec<Document>, Vec<Vec<u32>>)>,
        mut tokens: TokenWriter,
        mut index: IndexWriter,
    ) -> Result<Written, StageError> {
        let mut fertility = FertilityCounter::default();
        let mut docs = 0u64;
        let mut ids = Vec::new();
        for (batch, encodings) in input {
            for (doc, text_ids) in batch.iter().zip(&encodings) {
                let n_chars = fertility.add(&doc.lang, &doc.text, text_ids, &self.tok.is_byte_fallback);
                let offset = tokens.tokens_written();
                ids.clear();
                ids.extend(self.bos);
                ids.extend_from_slice(text_ids);
                ids.extend(self.eos);
                tokens.write(&ids)?;
                index.push(DocEntry {
                    id: doc.id.clone(),
                    lang: doc.lang.clone(),
                    offset,
                    n_tokens: ids.len() as u64,
                    n_chars,
                    n_bytes: doc.text.len() as u64,
                })?;
            }
            docs += batch.len() as u64;
            self.ctx.progress(
                docs,
                None,
                &format!("{docs} documents, {} tokens", tokens.tokens_written()),
            );
        }
        Ok(Written {
            tokens,
            index,
            fertility,
            docs,
        })
    }
}

const PARAMS: &[ParamSpec] = &[
    ParamSpec::optional(
        "add_bos",
        ParamType::Bool,
        "put the BOS token before each document (default: as the model's tokenizer does: tokenizer_config.json's \
         add_bos_token, else its post-processor, else yes when it has a BOS token)",
    ),
    ParamSpec::with_default(
        "add_eos",
        ParamType::Bool,
        "true",
        "put the EOS token after each document (the separator of a packed pretraining stream)",
    ),
    ParamSpec::optional(
        "bos_token",
        ParamType::Str,
        "BOS token text (default: tokenizer_config.json, special_tokens_map.json, config.json, then <s>, \
         <|begin_of_text|> or <bos>)",
    ),
    ParamSpec::optional(
        "eos_token",
        ParamType::Str,
        "EOS token text (default: tokenizer_config.json, special_tokens_map.json, config.json, then </s>, \
         <|end_of_text|>, <eos> or <|endoftext|>)",
    ),
    ParamSpec::with_default(
        "batch_docs",
        ParamType::Int,
        "1024",
        "documents encoded per parallel batch (bounds memory)",
    )
    .positive(),
];

/// A batch is also cut at this much text: the tokenizers crate keeps about
/// a hundred bytes per byte of text while it encodes (offsets, alignments,
/// a string per token), so a batch of long documents must stay small.
/// `ingest` splits documents at `max_doc_chars` for the same reason.
const BATCH_BYTES: usize = 4 << 20;

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
        doc: "an HF tokenizer.json (a file, `train-tokenizer` / `extend-vocab` output), or a model folder (its tokenizer.json, read with its tokenizer_config.json)",
    },
];

impl StageKind for Tokenize {
    fn name(&self) -> &'static str {
        "tokenize"
    }
    fn code_version(&self) -> &'static str {
        // 2: BOS/EOS read as transformers does (tokenizer_config.json, post-processor, ...).
        "2"
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

    fn estimate(&self, ctx: &babelflow_stage::EstimateContext) -> babelflow_stage::Estimate {
        crate::estimate::tokenize(ctx)
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let p = ctx.params;
        // A model folder stands for its tokenizer.json (and says, through its
        // tokenizer_config.json, how its texts begin).
        let bound = &ctx.single_input("tokenizer")?.path;
        let tokenizer_path = &if bound.is_dir() {
            bound.join("tokenizer.json")
        } else {
            bound.clone()
        };
        let tok = LoadedTokenizer::load(tokenizer_path)?;
        // The tokenizer's folder (a model folder, usually) says how its texts begin.
        let specials = Specials::resolve(
            &tok,
            tokenizer_path.parent(),
            &Overrides {
                bos_token: p.opt_str("bos_token")?.map(str::to_string),
                eos_token: p.opt_str("eos_token")?.map(str::to_string),
                add_bos: p.opt_bool("add_bos")?,
                add_eos: Some(p.bool("add_eos")?),
            },
        )?;
        let bos = specials.prefix().first().copied();
        let eos = match (&specials.eos, specials.add_eos) {
            (Some(e), true) => Some(e.id),
            (None, true) => {
                return Err(StageError::failed(
                    "the tokenizer has no EOS token to end documents with (looked in tokenizer_config.json, \
                     special_tokens_map.json, config.json, and for </s>, <|end_of_text|>, <eos>, <|endoftext|>); \
                     set `eos_token`, or `add_eos: false`",
                ))
            }
            _ => None,
        };
        let batch_docs = p.usize("batch_docs")?.max(1);

        let tokens = TokenWriter::create(&ctx.output("tokens.bin"), tok.vocab_size, tok.hash)?;
        let index = IndexWriter::create(&ctx.output("index.parquet"))?;
        let pipeline = Pipeline {
            ctx,
            tok: &tok,
            bos,
            eos,
            batch_docs,
        };
        let Written {
            tokens,
            index,
            fertility,
            docs,
        } = pipeline.run(tokens, index)?;
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
            "special_tokens": specials.describe(),
            "languages": languages,
        });
        ctx.write_json("stats.json", &stats)?;
        ctx.note("tokens", header.n_tokens);
        ctx.log(&format!("{docs} documents → {} tokens", header.n_tokens));
        Ok(())
    }
}
