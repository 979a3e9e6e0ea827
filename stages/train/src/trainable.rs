//! Which weights a training stage updates: everything (`full`), only the
//! token embeddings and output head (`embeddings`, Chinese-LLaMA's first
//! phase), or low-rank adapters on chosen projections (`lora`, through burn
//! 0.22's own `apply_lora`). `freeze` regexes over parameter paths
//! (`layers.0.mlp.up_proj.weight`) freeze more on top of any mode.

use babelflow_model::Llama;
use babelflow_stage::{ParamSpec, ParamType, Params, StageError};
use burn::module::{Lora, Module, ParamGroup};

pub const PARAMS: &[ParamSpec] = &[
    ParamSpec::with_default(
        "trainable",
        ParamType::Choice(&["full", "embeddings", "lora"]),
        r#""full""#,
        "what trains: every weight, only embeddings + head, or LoRA adapters",
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
];

const PROJECTIONS: &[&str] = &[
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
    problems
}

impl Trainable {
    pub fn from_params(params: &Params) -> Result<Self, StageError> {
        let mode = match params.str("trainable")? {
            "embeddings" => Mode::Embeddings,
            "lora" => Mode::Lora {
                rank: params.usize("lora_rank")?,
                alpha: params.f64("lora_alpha")?,
                targets: params.str_list("lora_targets")?,
            },
            _ => Mode::Full,
        };
        Ok(Trainable {
            mode,
            freeze: params.str_list("freeze")?,
        })
    }

    /// The model as it trains. Deterministic in structure, so a checkpoint
    /// of one run loads into the same preparation of the next.
    pub fn prepare(&self, model: Llama) -> Result<Llama, StageError> {
        let regexes = |patterns: Vec<String>| {
            ParamGroup::from_any_regexes(patterns).map_err(|e| param_error("freeze", group_error(e)))
        };
        let model = match &self.mode {
            Mode::Full => model,
            Mode::Embeddings => model
                .freeze()
                .unfreeze_group(regexes(vec!["^embed_tokens$".into(), r"^lm_head\.".into()])?),
            Mode::Lora { rank, alpha, targets } => {
                let pattern = format!(r"\.({})\.weight$", targets.join("|"));
                let group =
                    ParamGroup::from_regexes(vec![pattern]).map_err(|e| param_error("lora_targets", group_error(e)))?;
                model.apply_lora(Lora::new(*rank, *alpha).set_param_group(group))
            }
        };
        Ok(if self.freeze.is_empty() {
            model
        } else {
            model.freeze_group(regexes(self.freeze.clone())?)
        })
    }

    /// The model to export: LoRA adapters folded into their base weights.
    pub fn export(&self, model: &Llama) -> Llama {
        model.valid().materialize()
    }
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
        Llama::init(&config, &Device::flex().autodiff())
    }

    #[test]
    fn embeddings_mode_trains_only_embeddings_and_head() {
        let t = Trainable {
            mode: Mode::Embeddings,
            freeze: vec![],
        };
        let paths = trainable_paths(&t.prepare(tiny()).unwrap());
        assert_eq!(paths, ["embed_tokens", "lm_head.weight"]);
    }

    fn values(t: Tensor<2>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn lora_moves_only_adapters_and_exports_base_plus_their_product() {
        use babelflow_model::loss::cross_entropy;
        use burn::optim::{AdamWConfig, GradientsParams};
        use burn::tensor::{Int, TensorData};

        let t = Trainable {
            mode: Mode::Lora {
                rank: 2,
                alpha: 4.0,
                targets: vec!["q_proj".into(), "down_proj".into()],
            },
            freeze: vec![],
        };
        let original = tiny();
        let q_before = values(original.layers[0].self_attn.q_proj.weight.val());
        let model = t.prepare(original).unwrap();
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
        let merged = values(t.export(&model).layers[0].self_attn.q_proj.weight.val());
        for (m, e) in merged.iter().zip(&expected) {
            assert!((m - e).abs() < 1e-6, "{m} vs {e}");
        }
    }
}
