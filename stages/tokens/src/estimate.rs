//! Token counts and vocabularies at plan time (`plan --estimate`):
//! `train-tokenizer` and `extend-vocab` say how large their vocabulary
//! will be at most; `tokenize` turns its corpus's characters into tokens
//! at the tokenizer's rate, measured on the corpus when both exist; `mix`
//! has its budget.

use std::path::{Path, PathBuf};

use babelflow_corpus::estimate::text_chars;
use babelflow_corpus::read_corpus_head;
use babelflow_stage::estimate::{Basis, Count, Facts, PlannedInput};
use babelflow_stage::{Estimate, EstimateContext};

use crate::hf::LoadedTokenizer;

/// Tokens per character when no tokenizer can be measured yet: about what
/// a 32K LLaMA tokenizer makes of English prose (0.25) and of the study's
/// low-resource languages (0.3–0.5), said as an assumption.
pub const ASSUMED_TOKENS_PER_CHAR: f64 = 0.3;

/// Documents of each table (texts in all) read to measure a tokenizer's tokens per character.
const SAMPLE_DOCS: usize = 200;

/// A tokenizer's tokens per character: measured on the text where both
/// exist, else [`ASSUMED_TOKENS_PER_CHAR`], saying which.
#[derive(Debug, Clone, PartialEq)]
pub struct Rate {
    pub tokens_per_char: f64,
    pub basis: Basis,
}

impl Rate {
    pub fn measured_or_assumed(measured: Option<f64>) -> Rate {
        match measured {
            Some(tokens_per_char) => Rate {
                tokens_per_char,
                basis: Basis::Measured,
            },
            None => Rate {
                tokens_per_char: ASSUMED_TOKENS_PER_CHAR,
                basis: Basis::Assumed,
            },
        }
    }

    pub fn how(&self) -> String {
        match self.basis {
            Basis::Measured => format!("{:.3} tokens/char measured", self.tokens_per_char),
            _ => format!(
                "{} tokens/char assumed (no tokenizer or text yet)",
                self.tokens_per_char
            ),
        }
    }

    /// The tokens of `chars` characters.
    pub fn tokens(&self, chars: &Count) -> Count {
        chars.scaled(self.tokens_per_char, self.basis, format!("× {}", self.how()))
    }
}

/// Tokens per character of `tokenizer` (a tokenizer.json, or a model folder
/// with one) on the first [`SAMPLE_DOCS`] of `texts`.
pub fn tokens_per_char_of(tokenizer: &Path, texts: impl Iterator<Item = String>) -> Option<f64> {
    let file = if tokenizer.is_dir() {
        tokenizer.join("tokenizer.json")
    } else {
        tokenizer.to_path_buf()
    };
    let tokenizer = LoadedTokenizer::load(&file).ok()?;
    let (mut tokens, mut chars) = (0usize, 0usize);
    for text in texts.take(SAMPLE_DOCS) {
        chars += text.chars().count();
        tokens += tokenizer.tokenizer.encode(text.as_str(), false).map_or(0, |e| e.len());
    }
    (chars > 0).then(|| tokens as f64 / chars as f64)
}

/// Tokens per character of `tokenizer` on the first documents of each corpus table.
pub fn tokens_per_char(tokenizer: &Path, tables: &[PathBuf]) -> Option<f64> {
    let per_table = SAMPLE_DOCS / tables.len().max(1) + 1;
    let mut texts = Vec::new();
    for path in tables {
        read_corpus_head(path, per_table, &mut |doc| {
            texts.push(doc.text);
            Ok(())
        })
        .ok()?;
    }
    tokens_per_char_of(tokenizer, texts.into_iter())
}

/// A tokenizer input's file when it exists (a model folder stands for its tokenizer.json).
fn tokenizer_file(input: &PlannedInput) -> Option<PathBuf> {
    let path = input.path.as_ref()?;
    let file = if path.is_dir() {
        path.join("tokenizer.json")
    } else {
        path.clone()
    };
    file.is_file().then_some(file)
}

/// A tokenizer input's vocabulary: the upstream estimate's, else the file's.
fn vocab_of(input: &PlannedInput) -> Option<Count> {
    if let Some(v) = &input.facts.vocab_size {
        return Some(v.clone());
    }
    // A model folder that will exist stands for its tokenizer: its vocabulary is the config's.
    if let Some(size) = input.facts.model.as_ref().and_then(|m| m.config["vocab_size"].as_u64()) {
        return Some(Count::new(size as f64, Basis::Derived, "the model's vocab_size"));
    }
    let tokenizer = LoadedTokenizer::load(&tokenizer_file(input)?).ok()?;
    Some(Count::new(
        tokenizer.vocab_size as f64,
        Basis::Measured,
        "the tokenizer's ids",
    ))
}

fn vocabulary(vocab_size: Count, base_vocab_size: Option<usize>) -> Facts {
    Facts {
        vocab_size: Some(vocab_size),
        base_vocab_size,
        ..Facts::default()
    }
}

/// `train-tokenizer`: at most `vocab_size` ids.
pub fn train_tokenizer(ctx: &EstimateContext) -> Estimate {
    let Ok(size) = ctx.params.usize("vocab_size") else {
        return Estimate::default();
    };
    let count = Count::new(size as f64, Basis::Params, "vocab_size (at most)");
    Estimate {
        outputs: [("tokenizer.json".to_string(), vocabulary(count, None))].into(),
        ..Estimate::default()
    }
}

/// `extend-vocab`: the base vocabulary plus at most `new_tokens`.
pub fn extend_vocab(ctx: &EstimateContext) -> Estimate {
    let base = ctx.input("tokenizer").first().and_then(vocab_of);
    let (Some(base), Ok(new)) = (base, ctx.params.usize("new_tokens")) else {
        return Estimate::default();
    };
    let extended = Count::new(
        base.value + new as f64,
        base.basis.max(Basis::Params),
        format!("{} + new_tokens {new} (at most)", base.how),
    );
    let facts = vocabulary(extended, Some(base.value as usize));
    Estimate {
        outputs: ["tokenizer.json", "added_tokens.json"]
            .map(|name| (name.to_string(), facts.clone()))
            .into(),
        ..Estimate::default()
    }
}

/// `tokenize`: the corpus's characters × the tokenizer's tokens per character.
pub fn tokenize(ctx: &EstimateContext) -> Estimate {
    let corpora = ctx.input("corpus");
    let Some(chars) = text_chars(corpora, 0) else {
        return Estimate::default();
    };
    let tables: Vec<PathBuf> = corpora.iter().filter_map(|c| c.path.clone()).collect();
    let tokenizer = ctx.input("tokenizer").first().and_then(tokenizer_file);
    let rate = match tokenizer {
        Some(file) if tables.len() == corpora.len() => tokens_per_char(&file, &tables),
        _ => None,
    };
    let tokens = Rate::measured_or_assumed(rate).tokens(&chars);
    let facts = Facts {
        tokens: Some(tokens),
        ..Facts::default()
    };
    Estimate {
        outputs: [("tokens.bin".to_string(), facts)].into(),
        ..Estimate::default()
    }
}

/// `mix`: its budget, else every input's tokens.
pub fn mix(ctx: &EstimateContext) -> Estimate {
    let tokens = match ctx.params.opt_usize("budget") {
        Ok(Some(budget)) => Some(Count::new(budget as f64, Basis::Params, "budget")),
        _ => ctx
            .input("tokens")
            .iter()
            .map(|t| t.facts.tokens.clone())
            .collect::<Option<Vec<Count>>>()
            .map(|counts| {
                let basis = counts.iter().map(|c| c.basis).max().unwrap_or(Basis::Derived);
                Count::new(counts.iter().map(|c| c.value).sum(), basis, "every input's tokens")
            }),
    };
    let Some(tokens) = tokens else {
        return Estimate::default();
    };
    Estimate {
        outputs: [(
            "tokens.bin".to_string(),
            Facts {
                tokens: Some(tokens),
                ..Facts::default()
            },
        )]
        .into(),
        ..Estimate::default()
    }
}
