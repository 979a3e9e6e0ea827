//! Which weights a training stage updates: everything (`full`), only the
//! token embeddings and output head (`embeddings`), only the rows of them
//! that `resize-vocab` added (`new-embeddings`, Chinese-LLaMA's and EEVE's
//! first phase: the original rows are held apart, frozen, with no optimizer
//! state), or low-rank adapters on chosen projections (`lora`, through burn
//! 0.22's own `apply_lora`). `freeze` regexes over parameter paths
//! (`layers.0.mlp.up_proj.weight`) freeze more on top of any mode.
//! `precision: bf16` holds every weight matrix that does not train in bf16
//! from the moment it is read; what trains, its gradient and its AdamW
//! state stay f32 (LoRA's adapters too).

use std::path::Path;

use babelflow_model::hf::{module_path, HeldAs};
use babelflow_model::resize::{ResizedVocab, RESIZED_VOCAB};
use babelflow_model::Llama;
use babelflow_stage::{ParamSpec, ParamType, Params, StageError};
use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::tensor::{DType, Tensor};

pub const PARAMS: &[ParamSpec] = &[
    ParamSpec::with_default(
        "trainable",
        ParamType::Choice(&["full", "embeddings", "new-embeddings", "lora"]),
        r#""full""#,
        "what trains: every weight, only embeddings + head, only their rows resize-vocab added, or LoRA adapters",
    ),
    ParamSpec::with_default(
        "freeze",
        ParamType::StrList,
        "[]",
        "regexes of parameter paths to keep fixed, e.g. `layers\\.[0-3]\\..*`",
    ),
    ParamSpec::with_default("lora_rank", ParamType::Int, "8", "LoRA rank"),
    ParamSpec::with_default(
        "lora_alpha",
        ParamType::Float,
        "16.0",
        "LoRA scale numerator (scale = alpha / rank)",
    ),
    ParamSpec::with_default(
        "lora_targets",
        ParamType::StrList,
        r#"["q_proj", "k_proj", "v_proj", "o_proj"]"#,
        "projections that get adapters: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj",
    ),
    ParamSpec::with_default(
        "precision",
        ParamType::Choice(&["f32", "bf16"]),
        r#""f32""#,
        "dtype of the weight matrices that do not train (bf16: half their memory); what trains stays f32",
    ),
];

pub const PROJECTIONS: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    Full,
    Embeddings,
    /// The rows from `Trainable::base_rows` on, of the embeddings and an untied head.
    NewEmbeddings,
    Lora {
        rank: usize,
        alpha: f64,
        targets: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Trainable {
    pub mode: Mode,
    pub freeze: Vec<String>,
    /// The dtype frozen weight matrices are held in (f32 or bf16).
    pub frozen_dtype: DType,
    /// For `new-embeddings`: the first added row, from the model folder's
    /// `resized_vocab.json` ([`Trainable::for_model`]).
    pub base_rows: Option<usize>,
}

fn param_error(name: &str, message: String) -> StageError {
    StageError::Param {
        name: name.to_string(),
        message,
    }
}

/// Problems with the trainable parameters, for the recipe's `check`.
pub fn check(params: &Params) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if let Ok(patterns) = params.str_list("freeze") {
        if let Err(e) = ParamGroup::from_any_regexes(patterns) {
            problems.push(("freeze".into(), format!("not a regular expression: {}", group_error(e))));
        }
    }
    if let Ok(targets) = params.str_list("lora_targets") {
        for t in targets {
            if !PROJECTIONS.contains(&t.as_str()) {
                problems.push((
                    "lora_targets".into(),
                    format!("`{t}` is not a projection ({})", PROJECTIONS.join(", ")),
                ));
            }
        }
    }
    if params.i64("lora_rank").is_ok_and(|r| r <= 0) {
        problems.push(("lora_rank".into(), "must be positive".into()));
    }
    let nothing_frozen =
        params.str("trainable").is_ok_and(|t| t == "full") && params.str_list("freeze").is_ok_and(|f| f.is_empty());
    if params.str("precision").is_ok_and(|p| p == "bf16") && nothing_frozen {
        problems.push((
            "precision".into(),
            "`bf16` holds the weights that do not train; with `trainable: full` and no `freeze` every \
             weight trains (in f32): use `trainable: lora` or `embeddings`, or `freeze`"
                .into(),
        ));
    }
    problems
}

/// The parameter group `trainable: embeddings` trains.
fn embeddings_group() -> ParamGroup {
    ParamGroup::from_any_regexes(vec!["^embed_tokens$", r"^lm_head\."]).expect("fixed patterns")
}

impl Trainable {
    /// `mode`, its frozen weights held in `frozen_dtype`, nothing else frozen.
    pub fn new(mode: Mode, frozen_dtype: DType) -> Self {
        Trainable {
            mode,
            freeze: Vec::new(),
            frozen_dtype,
            base_rows: None,
        }
    }

    pub fn from_params(params: &Params) -> Result<Self, StageError> {
        let mode = match params.str("trainable")? {
            "embeddings" => Mode::Embeddings,
            "new-embeddings" => Mode::NewEmbeddings,
            "lora" => Mode::Lora {
                rank: params.usize("lora_rank")?,
                alpha: params.f64("lora_alpha")?,
                targets: params.str_list("lora_targets")?,
            },
            _ => Mode::Full,
        };
        let frozen_dtype = match params.str("precision")? {
            "bf16" => DType::BF16,
            _ => DType::F32,
        };
        Ok(Trainable {
            mode,
            freeze: params.str_list("freeze")?,
            frozen_dtype,
            base_rows: None,
        })
    }

    /// This choice for the model in `model_dir`: `new-embeddings` reads
    /// where the added rows begin, and refuses a model `resize-vocab` did
    /// not make.
    pub fn for_model(mut self, model_dir: &Path) -> Result<Self, StageError> {
        if self.mode != Mode::NewEmbeddings {
            return Ok(self);
        }
        let resized = ResizedVocab::read(model_dir).map_err(|e| StageError::failed(e.to_string()))?;
        let Some(resized) = resized else {
            return Err(param_error(
                "trainable",
                format!(
                    "`new-embeddings` trains the rows `resize-vocab` added, and the model in {} was not \
                     resized (it has no {RESIZED_VOCAB}): put an extend-vocab + resize-vocab before this \
                     stage, or train `embeddings`",
                    model_dir.display()
                ),
            ));
        };
        if resized.base_vocab_size >= resized.vocab_size {
            return Err(param_error(
                "trainable",
                format!(
                    "`new-embeddings`: {} in {} adds no rows ({} before, {} after)",
                    RESIZED_VOCAB,
                    model_dir.display(),
                    resized.base_vocab_size,
                    resized.vocab_size
                ),
            ));
        }
        self.base_rows = Some(resized.base_vocab_size);
        Ok(self)
    }

    /// The dtype each checkpoint tensor is read into: matrices that will
    /// not train in `frozen_dtype`, the rest (and every vector: norms and
    /// biases, a few kilobytes, in which activations keep f32) in f32.
    /// [`Trainable::check_held`] checks the result against `prepare`'s.
    pub fn held_as(&self) -> Result<HeldAs, StageError> {
        let frozen_dtype = self.frozen_dtype;
        if frozen_dtype == DType::F32 {
            return Ok(Box::new(|_, _| DType::F32));
        }
        let trains_in_mode = match &self.mode {
            Mode::Full => Some(ParamGroup::all()),
            // New rows: read whole in f32, then split (`prepare`).
            Mode::Embeddings | Mode::NewEmbeddings => Some(embeddings_group()),
            Mode::Lora { .. } => None,
        };
        let frozen = self.freeze_group()?;
        Ok(Box::new(move |name, rank| {
            let path = module_path(name);
            let id = ParamId::new();
            let trains = trains_in_mode.as_ref().is_some_and(|g| g.matches(&id, Some(&path)))
                && !frozen.as_ref().is_some_and(|g| g.matches(&id, Some(&path)));
            if rank >= 2 && !trains {
                frozen_dtype
            } else {
                DType::F32
            }
        }))
    }

    fn freeze_group(&self) -> Result<Option<ParamGroup>, StageError> {
        if self.freeze.is_empty() {
            return Ok(None);
        }
        ParamGroup::from_any_regexes(self.freeze.clone())
            .map(Some)
            .map_err(|e| param_error("freeze", group_error(e)))
    }

    /// Refuses a prepared model in which a weight that trains is not held in
    /// f32 (its updates would be rounded away), or a frozen matrix is not in
    /// `frozen_dtype`; returns what the weights hold, by kind.
    pub fn check_held(&self, model: &Llama) -> Result<Held, StageError> {
        let mut visitor = HeldVisitor::default();
        model.visit(&mut visitor);
        if let Some(problem) = visitor.problems(self.frozen_dtype).into_iter().next() {
            return Err(StageError::failed(format!("internal: {problem}")));
        }
        Ok(visitor.held)
    }

    /// The model as it trains. Deterministic in structure, so a checkpoint
    /// of one run loads into the same preparation of the next.
    /// `seed` draws the LoRA adapters' initial values.
    pub fn prepare(&self, model: Llama, seed: u64) -> Result<Llama, StageError> {
        let model = match &self.mode {
            Mode::Full => model,
            Mode::Embeddings => model.freeze().unfreeze_group(embeddings_group()),
            Mode::NewEmbeddings => {
                let base_rows = self
                    .base_rows
                    .ok_or_else(|| StageError::failed("internal: new-embeddings without its base rows"))?;
                split_added_rows(model.freeze(), base_rows, self.frozen_dtype)?
            }
            Mode::Lora { rank, alpha, targets } => {
                let pattern = format!(r"\.({})\.weight$", targets.join("|"));
                let group =
                    ParamGroup::from_regexes(vec![pattern]).map_err(|e| param_error("lora_targets", group_error(e)))?;
                // Adapters in f32 whatever the base is held in.
                model.apply_reparameterization(crate::lora::SeededLora {
                    rank: *rank,
                    alpha: *alpha,
                    group,
                    seed,
                })
            }
        };
        Ok(match self.freeze_group()? {
            None => model,
            Some(group) => model.freeze_group(group),
        })
    }

    /// The model to export, off the autodiff graph. LoRA adapters stay
    /// attached: each weight's `val()` is its base plus the adapter's
    /// product, in f32, which `hf::save` computes one tensor at a time as it
    /// writes (merging them all first would hold an f32 copy of every
    /// adapted matrix beside the frozen bases).
    pub fn export(&self, model: &Llama) -> Llama {
        model.valid()
    }
}

/// What a prepared model's weights hold, in bytes.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Held {
    /// Weights that train (f32), LoRA adapters included.
    pub trainable_bytes: u64,
    pub trainable_parameters: u64,
    /// Weights that do not train, by dtype name.
    pub frozen_bytes: std::collections::BTreeMap<String, u64>,
}

#[derive(Default)]
struct HeldVisitor {
    stack: Vec<String>,
    held: Held,
    /// (path, trains, dtype, rank) of every parameter.
    seen: Vec<(String, bool, DType, usize)>,
}

impl ModuleVisitor for HeldVisitor {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let base = param.base();
        let (dtype, count) = (base.dtype(), base.shape().num_elements() as u64);
        let bytes = count * dtype.size() as u64;
        let trains = param.is_require_grad();
        if trains {
            self.held.trainable_bytes += bytes;
            self.held.trainable_parameters += count;
        } else {
            *self
                .held
                .frozen_bytes
                .entry(format!("{dtype:?}").to_lowercase())
                .or_default() += bytes;
        }
        self.seen.push((self.stack.join("."), trains, dtype, D));
    }
}

impl HeldVisitor {
    fn problems(&self, frozen_dtype: DType) -> Vec<String> {
        self.seen
            .iter()
            .filter_map(|(path, trains, dtype, rank)| {
                let want = if *trains || *rank < 2 { DType::F32 } else { frozen_dtype };
                (*dtype != want).then(|| {
                    let role = if *trains { "trains" } else { "is frozen" };
                    format!("parameter `{path}` {role} but is held in {dtype:?}, not {want:?}")
                })
            })
            .collect()
    }
}

/// `matrix`'s rows before `base_rows` (frozen, in `frozen_dtype`) and from
/// it on (trainable, f32), each a tensor of its own: the optimizer sees
/// only the second, so the first stays bit for bit and has no state.
fn split(matrix: Tensor<2>, base_rows: usize, frozen_dtype: DType) -> (Param<Tensor<2>>, Param<Tensor<2>>) {
    let [rows, _] = matrix.dims();
    let own = matrix.clone().narrow(0, 0, base_rows).cast(frozen_dtype);
    let added = matrix.narrow(0, base_rows, rows - base_rows);
    (
        Param::from_tensor(own).set_require_grad(false),
        Param::from_tensor(added).set_require_grad(true),
    )
}

fn split_added_rows(model: Llama, base_rows: usize, frozen_dtype: DType) -> Result<Llama, StageError> {
    let [rows, _] = model.embed_tokens.base().dims();
    if base_rows >= rows {
        return Err(param_error(
            "trainable",
            format!("`new-embeddings`: the model has {rows} rows, so none from row {base_rows} on to train"),
        ));
    }
    let (embed_tokens, embed_added) = split(model.embed_tokens.val(), base_rows, frozen_dtype);
    let (lm_head, lm_head_added) = match model.lm_head {
        Some(head) => {
            let (own, added) = split(head.weight.val(), base_rows, frozen_dtype);
            (
                Some(babelflow_model::llama::Proj {
                    weight: own,
                    bias: head.bias,
                }),
                Some(added),
            )
        }
        None => (None, None),
    };
    Ok(Llama {
        embed_tokens,
        embed_added: Some(embed_added),
        lm_head,
        lm_head_added,
        ..model
    })
}

/// burn's `ParamGroupError` has no `Display`; say what it holds.
fn group_error(e: burn::module::ParamGroupError) -> String {
    match e {
        burn::module::ParamGroupError::InvalidPatternError(message) => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use babelflow_model::LlamaConfig;
    use burn::module::{ModuleVisitor, Param};
    use burn::tensor::{Device, Tensor};

    /// Paths of the parameters that would receive gradients.
    fn trainable_paths(model: &Llama) -> Vec<String> {
        #[derive(Default)]
        struct Paths {
            stack: Vec<String>,
            found: Vec<String>,
        }
        impl ModuleVisitor for Paths {
            fn enter_module(&mut self, name: &str, _container: &str) {
                self.stack.push(name.to_string());
            }
            fn exit_module(&mut self, _name: &str, _container: &str) {
                self.stack.pop();
            }
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if param.is_require_grad() {
                    self.found.push(self.stack.join("."));
                }
            }
        }
        let mut p = Paths::default();
        model.visit(&mut p);
        p.found
    }

    fn tiny() -> Llama {
        let config = LlamaConfig::tiny(64, 16, 2, 2, 2);
        Llama::init(&config, 0, &Device::flex().autodiff())
    }

    #[test]
    fn embeddings_mode_trains_only_embeddings_and_head() {
        let t = Trainable {
            mode: Mode::Embeddings,
            freeze: vec![],
            frozen_dtype: DType::F32,
            base_rows: None,
        };
        let paths = trainable_paths(&t.prepare(tiny(), 0).unwrap());
        assert_eq!(paths, ["embed_tokens", "lm_head.weight"]);
    }

    /// LoRA of rank 2, alpha 4, on `targets`, the base in f32.
    fn lora_rank_2(targets: &[&str]) -> Trainable {
        Trainable {
            mode: Mode::Lora {
                rank: 2,
                alpha: 4.0,
                targets: targets.iter().map(|t| t.to_string()).collect(),
            },
            freeze: vec![],
            frozen_dtype: DType::F32,
            base_rows: None,
        }
    }

    fn values(t: Tensor<2>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    /// Two runs in one process (`run --jobs 2`) share burn's random
    /// generator; adapters drawn from it depended on what the other run drew.
    #[test]
    fn lora_adapters_depend_on_the_seed_and_the_weight_not_on_the_process() {
        use burn::tensor::Distribution;
        let t = lora_rank_2(&["q_proj", "v_proj"]);
        let a_of = |model: &Llama, layer: usize| {
            let q = &model.layers[layer].self_attn.q_proj.weight;
            values(q.adapter().expect("q_proj has an adapter").a.val())
        };
        let device = Device::flex().autodiff();
        let first = t.prepare(tiny(), 7).unwrap();
        // Something else in the process seeds and draws from burn's generator.
        device.seed(12345);
        let _ = Tensor::<2>::random([50, 50], Distribution::Normal(0.0, 1.0), &device);
        let again = t.prepare(tiny(), 7).unwrap();
        assert_eq!(a_of(&first, 0), a_of(&again, 0));
        assert_eq!(a_of(&first, 1), a_of(&again, 1));
        // Each weight has its own draw, and the seed changes them.
        assert_ne!(a_of(&first, 0), a_of(&first, 1));
        assert_ne!(a_of(&first, 0), a_of(&t.prepare(tiny(), 8).unwrap(), 0));
        // A ~ N(0, 1/rank): 16 × 2 values with a spread near 1/2.
        let a = a_of(&first, 0);
        let sd = (a.iter().map(|x| x * x).sum::<f32>() / a.len() as f32).sqrt();
        assert!(sd > 0.3 && sd < 0.7, "{sd}");
    }

    #[test]
    fn a_random_model_depends_on_its_seed_alone() {
        use burn::tensor::Distribution;
        let config = LlamaConfig::tiny(64, 16, 2, 2, 2);
        let device = Device::flex();
        let weights = |model: &Llama| values(model.layers[1].mlp.up_proj.weight.val());
        let first = Llama::init(&config, 3, &device);
        device.seed(99);
        let _ = Tensor::<2>::random([50, 50], Distribution::Normal(0.0, 1.0), &device);
        assert_eq!(weights(&first), weights(&Llama::init(&config, 3, &device)));
        assert_ne!(weights(&first), weights(&Llama::init(&config, 4, &device)));
    }

    #[test]
    fn lora_moves_only_adapters_and_exports_base_plus_their_product() {
        use babelflow_model::loss::cross_entropy;
        use burn::optim::{AdamWConfig, GradientsParams};
        use burn::tensor::{Int, TensorData};

        let t = lora_rank_2(&["q_proj", "down_proj"]);
        let original = tiny();
        let q_before = values(original.layers[0].self_attn.q_proj.weight.val());
        let model = t.prepare(original, 0).unwrap();
        let paths = trainable_paths(&model);
        assert!(
            paths.iter().all(|p| p.contains("q_proj") || p.contains("down_proj")),
            "{paths:?}"
        );
        assert_eq!(paths.len(), 2 * 2 * 2, "a and b on two projections in two layers");

        let device = Device::flex().autodiff();
        let config = LlamaConfig::tiny(64, 16, 2, 2, 2);
        let rope = babelflow_model::Rope::new(&config, 8, &device).unwrap();
        let ids: Vec<i64> = (0..9).map(|i| (i * 7) % 64).collect();
        let x = Tensor::<2, Int>::from_data(TensorData::new(ids[..8].to_vec(), [1, 8]), &device);
        let y = Tensor::<2, Int>::from_data(TensorData::new(ids[1..].to_vec(), [1, 8]), &device);
        let loss = cross_entropy(model.forward(x, &rope, None), y, None);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let mut optim = AdamWConfig::new().init();
        let model = optim.step(1e-2, model, grads);

        let q = &model.layers[0].self_attn.q_proj.weight;
        assert_eq!(values(q.base()), q_before, "the base weight never moves");
        let adapter = q.adapter().expect("q_proj has an adapter");
        let delta = adapter.a.val().matmul(adapter.b.val()).mul_scalar(adapter.scale);
        assert!(
            values(delta.clone()).iter().any(|v| *v != 0.0),
            "one step moved the adapter"
        );
        let expected = values(q.base() + delta);
        let exported = t.export(&model);
        let merged = values(exported.layers[0].self_attn.q_proj.weight.val());
        for (m, e) in merged.iter().zip(&expected) {
            assert!((m - e).abs() < 1e-6, "{m} vs {e}");
        }

        // The adapted model computes base and low-rank path apart; the merged
        // one the same product in one matrix.
        let x = Tensor::<2, Int>::from_data(TensorData::new(ids[..8].to_vec(), [1, 8]), &device);
        let adapted = model
            .forward(x.clone(), &rope, None)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let exported_logits = exported
            .forward(
                x.inner(),
                &babelflow_model::Rope::new(&config, 8, &Device::flex()).unwrap(),
                None,
            )
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        for (a, m) in adapted.iter().zip(&exported_logits) {
            assert!((a - m).abs() < 1e-5 * m.abs().max(1.0), "{a} vs {m}");
        }
    }

    fn params(values: serde_json::Value) -> Params {
        let serde_json::Value::Object(map) = values else {
            unreachable!()
        };
        Params::new(map)
    }

    #[test]
    fn bf16_with_nothing_frozen_is_refused_naming_the_parameter() {
        let full = params(serde_json::json!({"trainable": "full", "freeze": [], "precision": "bf16"}));
        let problems = check(&full);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "precision");
        assert!(problems[0].1.contains("every weight trains"), "{}", problems[0].1);
        let frozen_some =
            params(serde_json::json!({"trainable": "full", "freeze": ["^layers\\.0\\."], "precision": "bf16"}));
        assert!(check(&frozen_some).is_empty());
    }

    /// What `held_as` reads each tensor into is what `prepare` then trains
    /// or freezes: checked by `check_held` for every mode.
    #[test]
    fn bf16_holds_exactly_the_frozen_matrices() {
        let config = LlamaConfig::tiny(64, 16, 2, 2, 2);
        let lora = Mode::Lora {
            rank: 2,
            alpha: 4.0,
            targets: vec!["q_proj".into()],
        };
        for (mode, freeze) in [
            (Mode::Embeddings, vec![]),
            (lora, vec![]),
            (Mode::Full, vec![r"^layers\.1\.".to_string()]),
        ] {
            let t = Trainable {
                mode: mode.clone(),
                freeze,
                frozen_dtype: DType::BF16,
                base_rows: None,
            };
            let held_as = t.held_as().unwrap();
            // The tiny model's tensors, read as a checkpoint would be.
            let device = Device::flex().autodiff();
            let mut model = Llama::init(&config, 0, &device);
            model = model.map(&mut CastAs(&held_as, Vec::new()));
            let model = t.prepare(model, 0).unwrap();
            let held = t.check_held(&model).unwrap_or_else(|e| panic!("{mode:?}: {e}"));
            assert!(held.frozen_bytes["bf16"] > 0, "{mode:?}: {held:?}");
            assert!(held.trainable_bytes > 0, "{mode:?}: {held:?}");
        }
        // A model read all in bf16 is refused: its trainable weights would round.
        let t = Trainable {
            mode: Mode::Embeddings,
            freeze: vec![],
            frozen_dtype: DType::BF16,
            base_rows: None,
        };
        let all_bf16 = t.prepare(babelflow_model::Precision::Bf16.apply(tiny()), 0).unwrap();
        let err = t.check_held(&all_bf16).unwrap_err().to_string();
        assert!(err.contains("`embed_tokens` trains but is held in BF16"), "{err}");
    }

    /// Casts each parameter to what `held_as` gives its checkpoint name.
    struct CastAs<'a>(&'a HeldAs, Vec<String>);

    impl burn::module::ModuleMapper for CastAs<'_> {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.1.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.1.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let path = self.1.join(".");
            let name = match path.as_str() {
                "embed_tokens" => "model.embed_tokens.weight".to_string(),
                p if p.starts_with("lm_head") => p.to_string(),
                p => format!("model.{p}"),
            };
            assert_eq!(module_path(&name), path);
            let dtype = (self.0)(&name, D);
            param.map(|t| t.cast(dtype))
        }
    }
}
