//! `babelflow new`: a commented transfer recipe for one target language,
//! checked by planning it before it is handed over.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use babelflow::engine::{Pipeline, Selection};
use babelflow::registry::Registry;
use babelflow::store::Store;

use super::{EXIT_ERROR, EXIT_INVALID};

/// What the user asked for.
#[derive(clap::Args)]
pub struct NewRecipe {
    /// Where to write the recipe.
    #[arg(value_name = "RECIPE")]
    pub path: PathBuf,
    /// The target language's ISO 639 code (sw, hi, vi, ...).
    #[arg(long)]
    pub lang: String,
    /// The English model: an HF folder or a .gguf file.
    #[arg(long, value_name = "MODEL")]
    pub base: PathBuf,
    /// Target-language text [default: the shipped sample for --lang].
    #[arg(long, value_name = "PATH")]
    pub text: Option<PathBuf>,
    /// English text for the bilingual mix [default: the shipped English sample].
    #[arg(long, value_name = "PATH")]
    pub english: Option<PathBuf>,
    /// Target-language instructions (Alpaca/BELLE/Bactrian-X/ShareGPT JSON) [default: the shipped sample].
    #[arg(long, value_name = "PATH")]
    pub instructions: Option<PathBuf>,
    /// Also extend the vocabulary with target-language tokens, and compare both.
    #[arg(long)]
    pub compare_vocab: bool,
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
}

/// ISO 639 codes of languages the study and its follow-ups covered, for comments.
const LANGUAGES: &[(&str, &str)] = &[
    ("ar", "Arabic"),
    ("bn", "Bengali"),
    ("de", "German"),
    ("es", "Spanish"),
    ("fr", "French"),
    ("gu", "Gujarati"),
    ("hi", "Hindi"),
    ("id", "Indonesian"),
    ("ja", "Japanese"),
    ("ko", "Korean"),
    ("ml", "Malayalam"),
    ("mr", "Marathi"),
    ("ne", "Nepali"),
    ("ny", "Chichewa"),
    ("pt", "Portuguese"),
    ("ru", "Russian"),
    ("sw", "Swahili"),
    ("ta", "Tamil"),
    ("te", "Telugu"),
    ("th", "Thai"),
    ("tr", "Turkish"),
    ("ur", "Urdu"),
    ("vi", "Vietnamese"),
    ("zh", "Chinese"),
];

fn language_name(lang: &str) -> String {
    LANGUAGES
        .iter()
        .find(|(code, _)| *code == lang)
        .map_or_else(|| format!("`{lang}`"), |(_, name)| name.to_string())
}

/// `path` as the recipe will name it: relative to the recipe's folder when it
/// can be, so the recipe and its data move together.
fn relative_to(path: &Path, recipe_dir: &Path) -> String {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let (path, dir) = (absolute(path), absolute(recipe_dir));
    let shown = pathdiff(&path, &dir).unwrap_or(path);
    let text = shown.to_string_lossy().replace('\\', "/");
    // Recipes need a `/` to tell a file from an instance name.
    if text.contains('/') {
        text
    } else {
        format!("./{text}")
    }
}

/// `path` relative to `base` (both absolute), with `..` where needed.
fn pathdiff(path: &Path, base: &Path) -> Option<PathBuf> {
    let (mut a, mut b) = (path.components().peekable(), base.components().peekable());
    while let (Some(x), Some(y)) = (a.peek(), b.peek()) {
        if x != y {
            break;
        }
        a.next();
        b.next();
    }
    let mut out = PathBuf::new();
    for _ in b {
        out.push("..");
    }
    out.extend(a);
    (!out.as_os_str().is_empty()).then_some(out)
}

/// The shipped sample of `kind` for `lang` (`data/samples/text/sw.txt`), when
/// this babelflow runs from a checkout that has it.
fn shipped_sample(kind: &str, file: &str) -> Option<PathBuf> {
    let roots = [
        std::env::current_dir().ok(),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR"))),
    ];
    roots
        .into_iter()
        .flatten()
        .map(|root| root.join("data/samples").join(kind).join(file))
        .find(|p| p.exists())
}

fn yaml_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| format!("\"{text}\""))
}

/// The recipe's text.
pub fn render(n: &NewRecipe, text: &str, english: &str, instructions: &str) -> String {
    let lang = &n.lang;
    let name = language_name(lang);
    let recipe_path = n.path.display();
    let vocab = if n.compare_vocab {
        "[original, extended]"
    } else {
        "[original]"
    };
    let mut out = format!(
        "# Adapt an English LLaMA-family model to {name} ({lang}): a recipe written by `babelflow new`.
#
# In the order of the study it follows (Zhao et al., 2024, \"LLaMA Beyond English\"):
#   1. {name} and English text in; a share of each held out to measure on;
#   2. the vocabulary: the base model's own{vocab_line};
#   3. further pretraining on {name} mixed with English: the study found that
#      training on the target language alone makes the model forget English,
#      and that a bilingual mix keeps it;
#   4. instruction tuning on {name} instructions (loss on the responses only);
#   5. evaluation: bits per character on held-out {name} and English before and
#      after each step (comparable across vocabularies), and answers to
#      instructions;
#   6. a report with every table and figure.
#
# Next:
#   babelflow plan {recipe_path} --estimate    # cost and fit here (`babelflow calibrate` once, for times)
#   babelflow run {recipe_path}
#   babelflow report {recipe_path}
#
# Sized for a 7B model in 24 GB (`vars.lean`; `plan --estimate` says
# whether it fits). For more, raise pretrain_steps.
name: {lang}-transfer
vars:
  base: {base}             # the English model: an HF folder (config.json + safetensors) or a .gguf file
  target_text: {text}      # {name} text: .txt, .jsonl, .json, .csv, .parquet files, or a folder of them
  english_text: {english}  # English text: for the mix, and to see what English is kept
  instructions: {instructions}  # {name} instructions: Alpaca, BELLE, Bactrian-X or ShareGPT JSON
  vocab: {vocab}
  # How both training stages hold a 7B model in 24 GB: LoRA over a bf16
  # base, activation checkpointing, the merged model saved in the base's
  # dtype. `trainable: full` trains every weight (about 16 bytes a parameter).
  lean: &lean
    trainable: lora
    lora_rank: 16
    lora_targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]
    precision: bf16
    checkpoint_activations: true
    save_dtype: input
  pretrain_steps: 1000     # × batch_size × seq_len tokens
  sft_steps: 300
  batch_size: 8
  seq_len: 512
defaults:
  backend: auto            # a GPU when this build has one and it answers, else the CPU
stages:
  # --- text ------------------------------------------------------------------
  corpus_target:
    kind: ingest
    needs: {{ files: \"${{vars.target_text}}\" }}
    with: {{ lang: {lang}, text_unit: paragraph, normalize: nfc, near_dup_threshold: 0.8 }}
  corpus_english:
    kind: ingest
    needs: {{ files: \"${{vars.english_text}}\" }}
    with: {{ lang: en, text_unit: paragraph, near_dup_threshold: 0.8 }}
  held_out:
    kind: split
    foreach: [target, english]
    needs: {{ table: \"corpus_${{item}}:corpus.parquet\" }}
    with: {{ validation: 0.05, test: 0.0 }}
  instructions:
    kind: ingest-instructions
    needs: {{ files: \"${{vars.instructions}}\" }}
    with: {{ lang: {lang} }}

  # --- the vocabulary ----------------------------------------------------------
  model_original:
    kind: import-model
    needs: {{ checkpoint: \"${{vars.base}}\" }}
",
        vocab_line = if n.compare_vocab {
            format!(", and beside it one extended with {name} tokens learnt from the target text (the study's second arm: a matrix over `vocab`)")
        } else {
            " (`babelflow new --compare-vocab` adds an extended one beside it)".to_string()
        },
        base = yaml_string(&relative_to(&n.base, n.path.parent().unwrap_or(Path::new(".")))),
        text = yaml_string(text),
        english = yaml_string(english),
        instructions = yaml_string(instructions),
    );
    if n.compare_vocab {
        out.push_str(
            "  extended_tokenizer:
    kind: extend-vocab
    needs: { tokenizer: model_original, corpus: \"held_out@target:train.parquet\" }
    with: { new_tokens: 8000 }
  model_extended:
    kind: resize-vocab
    needs:
      model: model_original
      added: \"extended_tokenizer:added_tokens.json\"
      tokenizer: \"extended_tokenizer:tokenizer.json\"
    with: { init: subword-mean }
",
        );
    }
    out.push_str(&format!(
        "  # Each text with each vocabulary (a model folder stands for its tokenizer).
  tokens:
    kind: tokenize
    matrix: {{ vocab: \"${{vars.vocab}}\", text: [target, english] }}
    needs: {{ corpus: \"held_out@${{matrix.text}}:train.parquet\", tokenizer: \"model_${{matrix.vocab}}\" }}
  val_tokens:
    kind: tokenize
    matrix: {{ vocab: \"${{vars.vocab}}\", text: [target, english] }}
    needs: {{ corpus: \"held_out@${{matrix.text}}:validation.parquet\", tokenizer: \"model_${{matrix.vocab}}\" }}

  # --- further pretraining on the bilingual mix ------------------------------
  mix:
    kind: mix
    foreach: ${{vars.vocab}}
    needs: {{ tokens: [\"tokens@${{item}}-target\", \"tokens@${{item}}-english\"] }}
    with: {{ ratios: {{ {lang}: 0.5, en: 0.5 }}, seed: 0 }}   # half English protects it
  pretrain:
    kind: pretrain
    foreach: ${{vars.vocab}}
    needs:
      model: \"model_${{item}}\"
      tokens: \"mix@${{item}}\"
      validation: [\"val_tokens@${{item}}-target\", \"val_tokens@${{item}}-english\"]
    with:
      <<: *lean
      steps: ${{vars.pretrain_steps}}
      batch_size: ${{vars.batch_size}}
      seq_len: ${{vars.seq_len}}
      lr: 2.0e-4
      min_lr: 2.0e-5
      warmup_steps: 20
      eval_every: 100

  # --- instruction tuning ------------------------------------------------------
  sft:
    kind: sft
    foreach: ${{vars.vocab}}
    needs:
      model: \"pretrain@${{item}}:model\"
      instructions: instructions
      validation: [\"val_tokens@${{item}}-target\", \"val_tokens@${{item}}-english\"]
    with:
      <<: *lean
      template: bactrian         # or alpaca, belle, chat (the model's own chat template)
      steps: ${{vars.sft_steps}}
      batch_size: ${{vars.batch_size}}
      max_len: ${{vars.seq_len}}
      lr: 1.0e-4
      min_lr: 1.0e-5
      warmup_steps: 10
      eval_every: 100

  # --- evaluation --------------------------------------------------------------
  perplexity_before:
    kind: perplexity
    foreach: ${{vars.vocab}}
    needs: {{ model: \"model_${{item}}:model\", text: \"held_out:validation.parquet\" }}
    with: {{ max_len: \"${{vars.seq_len}}\", max_docs: 500, precision: bf16 }}
  perplexity:
    kind: perplexity
    matrix: {{ step: [pretrain, sft], vocab: \"${{vars.vocab}}\" }}
    needs: {{ model: \"${{matrix.step}}@${{matrix.vocab}}:model\", text: \"held_out:validation.parquet\" }}
    with: {{ max_len: \"${{vars.seq_len}}\", max_docs: 500, precision: bf16 }}
  answers:
    kind: respond
    foreach: ${{vars.vocab}}
    needs: {{ model: \"sft@${{item}}:model\", instructions: instructions }}
    with: {{ template: bactrian, max_new_tokens: 128, max_examples: 20, precision: bf16 }}   # a look at the answers; instructions seen in training

  report:
    kind: report
    needs:
      corpus: [\"corpus_target:stats.json\", \"corpus_english:stats.json\"]
      tokens: \"tokens:stats.json\"
      training: [\"pretrain:stats.json\", \"sft:stats.json\"]
      evaluation: [\"perplexity_before:stats.json\", \"perplexity:stats.json\", \"answers:stats.json\"]
    with: {{ title: \"{name}: transfer from {base_name}\" }}
",
        base_name = n.base.file_name().map_or_else(|| n.base.display().to_string(), |f| f.to_string_lossy().into_owned()),
    ));
    out
}

pub fn new(registry: &Registry, n: NewRecipe) -> anyhow::Result<ExitCode> {
    let lang = n.lang.trim().to_string();
    let valid = (2..=3).contains(&lang.len()) && lang.chars().all(|c| c.is_ascii_lowercase());
    if !valid {
        eprintln!("error: --lang {lang:?}: give the language's ISO 639 code, two or three lowercase letters (sw, hi, vi, yue)");
        return Ok(ExitCode::from(EXIT_INVALID));
    }
    if lang == "en" {
        eprintln!("error: --lang en: the base model's language is English already; give the language to adapt it to");
        return Ok(ExitCode::from(EXIT_INVALID));
    }
    if n.path.exists() && !n.force {
        eprintln!(
            "error: {} exists; choose another path, or --force to overwrite it",
            n.path.display()
        );
        return Ok(ExitCode::from(EXIT_ERROR));
    }
    if !n.base.exists() {
        eprintln!(
            "error: --base {}: no such folder or file; give an HF model folder (config.json + *.safetensors) or a .gguf file",
            n.base.display()
        );
        return Ok(ExitCode::from(EXIT_ERROR));
    }
    let dir = n
        .path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    // Each input: the user's, else the shipped sample for the language, else a clear error.
    let input = |given: &Option<PathBuf>, kind: &str, file: String, flag: &str| -> Result<String, String> {
        let path = match given {
            Some(p) if p.exists() => p.clone(),
            Some(p) => return Err(format!("{flag} {}: no such file or folder", p.display())),
            None => shipped_sample(kind, &file).ok_or_else(|| {
                format!("{flag}: no {kind} given, and babelflow ships no sample {file}; give your own with {flag} PATH")
            })?,
        };
        Ok(relative_to(&path, &dir))
    };
    let paths = (
        input(&n.text, "text", format!("{lang}.txt"), "--text"),
        input(&n.english, "text", "en.txt".into(), "--english"),
        input(
            &n.instructions,
            "instructions",
            format!("{lang}.json"),
            "--instructions",
        ),
    );
    let (text, english, instructions) = match paths {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        (a, b, c) => {
            for e in [a.err(), b.err(), c.err()].into_iter().flatten() {
                eprintln!("error: {e}");
            }
            return Ok(ExitCode::from(EXIT_ERROR));
        }
    };
    let n = NewRecipe { lang, ..n };
    let recipe = render(&n, &text, &english, &instructions);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(&n.path, &recipe)?;
    // Handed over only if it plans: expansion, parameters, inputs.
    let planned = Pipeline::load(&n.path, &[], registry)
        .map_err(|d| d.to_string())
        .and_then(|p| {
            let store = Store::at(&p.default_store(None)).map_err(|e| e.to_string())?;
            p.plan(&store, &Selection::default()).map_err(|e| e.to_string())
        });
    match planned {
        Ok(planned) => {
            println!(
                "wrote {} ({} instances) for {} ({}).\nnext:\n  babelflow plan {} --estimate\n  babelflow run {}\n  babelflow report {}",
                n.path.display(),
                planned.len(),
                language_name(&n.lang),
                n.lang,
                n.path.display(),
                n.path.display(),
                n.path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!(
                "error: the recipe written to {} does not plan (a babelflow bug; please report it):\n{e}",
                n.path.display()
            );
            Ok(ExitCode::from(EXIT_ERROR))
        }
    }
}
