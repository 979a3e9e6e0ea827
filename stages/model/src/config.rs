//! The model's shape, read from and written to HF `config.json`
//! (`LlamaConfig` field names), and the rotary-embedding scaling variants.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ModelError;

/// `rope_scaling` variants babelflow computes exactly as HF does.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Dynamic NTK: for sequences longer than `max_position_embeddings`,
    /// the rotary base grows with the length (transformers' `dynamic`).
    Dynamic {
        factor: f64,
    },
    /// LLaMA-3.1's frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<Value>,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    /// `LlamaForCausalLM` (or absent) or `MistralForCausalLM`; kept on save.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
    /// Mistral's attention window; babelflow attends to every earlier
    /// position, which equals it for sequences up to this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// transformers ≥ 5 writes `rope_theta` and the scaling here; read
    /// into `rope_theta` / `rope_scaling` on load.
    #[serde(default, skip_serializing)]
    pub rope_parameters: Option<Value>,
}

/// The architectures whose computation is babelflow's LLaMA.
const ARCHITECTURES: &[&str] = &["LlamaForCausalLM", "MistralForCausalLM"];

fn default_max_pos() -> usize {
    2048
}
fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10000.0
}
fn default_act() -> String {
    "silu".into()
}

impl LlamaConfig {
    /// LLaMA-2-7B's shape (Touvron et al., 2023): d 4096, 32 layers of 32
    /// heads, intermediate 11008, vocabulary 32000, untied; what estimates
    /// are checked against by hand.
    pub fn llama_2_7b() -> Self {
        let mut config = Self::tiny(32000, 4096, 32, 32, 32);
        config.intermediate_size = 11008;
        config.max_position_embeddings = 4096;
        config
    }

    /// A small config for tests and from-scratch training.
    pub fn tiny(vocab_size: usize, hidden_size: usize, layers: usize, heads: usize, kv_heads: usize) -> Self {
        LlamaConfig {
            vocab_size,
            hidden_size,
            intermediate_size: hidden_size * 8 / 3 / 8 * 8 + 8,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: Some(kv_heads),
            head_dim: None,
            max_position_embeddings: 512,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            rope_scaling: None,
            tie_word_embeddings: false,
            bos_token_id: Some(1),
            eos_token_id: Some(Value::from(2)),
            hidden_act: "silu".into(),
            attention_bias: false,
            mlp_bias: false,
            architectures: None,
            model_type: None,
            sliding_window: None,
            rope_parameters: None,
        }
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// (hidden, head_dim, heads, kv_heads, intermediate, vocab): the sizes
    /// every tensor's shape is made of.
    pub fn dims(&self) -> (usize, usize, usize, usize, usize, usize) {
        (
            self.hidden_size,
            self.head_dim(),
            self.num_attention_heads,
            self.kv_heads(),
            self.intermediate_size,
            self.vocab_size,
        )
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// Refuses ids the embeddings cannot look up: `what` (a tokenizer, a
    /// token artifact) has `ids` ids; the model at `source` has `vocab_size`.
    pub fn check_vocab(&self, ids: usize, what: &str, source: &Path) -> Result<(), ModelError> {
        if ids <= self.vocab_size {
            return Ok(());
        }
        Err(ModelError::Config {
            path: source.to_path_buf(),
            message: format!(
                "{what} has {ids} ids but the model has {} embeddings (extend the model with resize-vocab)",
                self.vocab_size
            ),
        })
    }

    /// Everything babelflow's LLaMA cannot compute exactly, as one error.
    pub fn validate(&self, source: &Path) -> Result<(), ModelError> {
        let bad = |m: String| ModelError::Config {
            path: source.to_path_buf(),
            message: m,
        };
        if self.hidden_act != "silu" {
            return Err(bad(format!(
                "hidden_act `{}` is not supported (LLaMA uses silu)",
                self.hidden_act
            )));
        }
        if let Some(arch) = self
            .architectures
            .iter()
            .flatten()
            .find(|a| !ARCHITECTURES.contains(&a.as_str()))
        {
            return Err(bad(format!(
                "architectures: `{arch}` is not a layout babelflow computes (it loads {})",
                ARCHITECTURES.join(", ")
            )));
        }
        if let Some(t) = self.model_type.as_deref().filter(|t| !["llama", "mistral"].contains(t)) {
            return Err(bad(format!("model_type `{t}` is not llama or mistral")));
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(bad(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads,
                self.kv_heads()
            )));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(bad(format!(
                "head_dim {} must be even for rotary embeddings",
                self.head_dim()
            )));
        }
        self.rope_scaling().map_err(bad)?;
        // An id past the embedding table would only fail later, far from
        // here ("no BOS token" at tokenize, an index error in training).
        if let Some(id) = self.bos_token_id.filter(|&id| id as usize >= self.vocab_size) {
            return Err(bad(format!(
                "bos_token_id {id} is not a token of this model (vocab_size {}, ids 0..{})",
                self.vocab_size,
                self.vocab_size.saturating_sub(1)
            )));
        }
        let eos: Vec<u64> = match &self.eos_token_id {
            Some(Value::Array(ids)) => ids.iter().filter_map(Value::as_u64).collect(),
            Some(v) => v.as_u64().into_iter().collect(),
            None => Vec::new(),
        };
        for id in eos {
            if id as usize >= self.vocab_size {
                return Err(bad(format!(
                    "eos_token_id {id} is not a token of this model (vocab_size {}, ids 0..{})",
                    self.vocab_size,
                    self.vocab_size.saturating_sub(1)
                )));
            }
        }
        Ok(())
    }

    pub fn rope_scaling(&self) -> Result<RopeScaling, String> {
        let Some(v) = &self.rope_scaling else {
            return Ok(RopeScaling::None);
        };
        if v.is_null() {
            return Ok(RopeScaling::None);
        }
        let kind = v
            .get("rope_type")
            .or_else(|| v.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let num = |k: &str| {
            v.get(k)
                .and_then(Value::as_f64)
                .ok_or_else(|| format!("rope_scaling.{k} is missing"))
        };
        match kind {
            "default" => Ok(RopeScaling::None),
            "linear" => Ok(RopeScaling::Linear { factor: num("factor")? }),
            "dynamic" => Ok(RopeScaling::Dynamic { factor: num("factor")? }),
            "llama3" => Ok(RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            }),
            other => Err(format!(
                "rope_scaling.rope_type `{other}` is not supported (supported: default, linear, dynamic, llama3)"
            )),
        }
    }

    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let mut config: LlamaConfig = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: path.to_path_buf(),
            message: format!("not a LlamaConfig: {e}"),
        })?;
        config.read_rope_parameters();
        config.validate(path)?;
        Ok(config)
    }

    /// transformers 5's `rope_parameters` as the `rope_theta` /
    /// `rope_scaling` pair every version reads.
    fn read_rope_parameters(&mut self) {
        let Some(params) = self.rope_parameters.take().filter(Value::is_object) else {
            return;
        };
        if let Some(theta) = params.get("rope_theta").and_then(Value::as_f64) {
            self.rope_theta = theta;
        }
        let kind = params.get("rope_type").and_then(Value::as_str).unwrap_or("default");
        if kind != "default" && self.rope_scaling.as_ref().is_none_or(Value::is_null) {
            let mut scaling = params.clone();
            if let Value::Object(m) = &mut scaling {
                m.remove("rope_theta");
            }
            self.rope_scaling = Some(scaling);
        }
    }

    /// `MistralForCausalLM` or `LlamaForCausalLM`.
    pub fn architecture(&self) -> &str {
        self.architectures
            .as_ref()
            .and_then(|a| a.first())
            .map_or("LlamaForCausalLM", String::as_str)
    }

    /// Refuses a sequence longer than Mistral's attention window, where
    /// babelflow's full attention would differ from the model's.
    pub fn check_positions(&self, positions: usize) -> Result<(), String> {
        match self.sliding_window {
            Some(w) if positions > w => Err(format!(
                "sequences of {positions} positions exceed the model's sliding_window ({w}), which babelflow does not \
                 implement; keep max_len / seq_len at most {w}"
            )),
            _ => Ok(()),
        }
    }

    /// The HF `config.json` text, with the fields transformers expects.
    pub fn to_hf_json(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        let mistral = self.architecture() == "MistralForCausalLM";
        if let Value::Object(m) = &mut v {
            m.insert("model_type".into(), if mistral { "mistral" } else { "llama" }.into());
            m.insert("architectures".into(), serde_json::json!([self.architecture()]));
            if mistral {
                m.insert("sliding_window".into(), self.sliding_window.into());
            }
            m.insert("torch_dtype".into(), "float32".into());
            m.insert("num_key_value_heads".into(), self.kv_heads().into());
            m.insert("head_dim".into(), self.head_dim().into());
            m.insert("pretraining_tp".into(), 1.into());
            m.insert("initializer_range".into(), 0.02.into());
            m.insert("use_cache".into(), true.into());
        }
        v
    }
}

/// The inverse frequencies of rotary embedding for one head, HF's formula
/// (including `rope_scaling`), for sequences of up to `positions`.
/// `dynamic` depends on the length: transformers recomputes the base for
/// each forward longer than `max_position_embeddings`, so a table made for
/// `positions` equals it for a sequence of that length (scoring, training
/// windows), not for every step of a generation that grows past it.
pub fn inverse_frequencies(config: &LlamaConfig, positions: usize) -> Result<Vec<f64>, String> {
    let hd = config.head_dim();
    let with_base = |theta: f64| -> Vec<f64> {
        (0..hd / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f64 / hd as f64))
            .collect()
    };
    let base = with_base(config.rope_theta);
    Ok(match config.rope_scaling()? {
        RopeScaling::None => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
        RopeScaling::Dynamic { factor } => {
            let max = config.max_position_embeddings as f64;
            let len = (positions as f64).max(max);
            let dim = hd as f64;
            with_base(config.rope_theta * ((factor * len / max) - (factor - 1.0)).powf(dim / (dim - 2.0)))
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        } => {
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_beyond_the_embeddings_are_refused_naming_the_model_folder() {
        let config = LlamaConfig::tiny(100, 16, 1, 2, 2);
        let folder = Path::new("/models/tiny");
        assert!(config.check_vocab(100, "the tokenizer", folder).is_ok());
        let err = config
            .check_vocab(120, "the tokenizer", folder)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/models/tiny: the tokenizer has 120 ids but the model has 100 embeddings"),
            "{err}"
        );
        assert!(err.contains("resize-vocab"), "{err}");
    }
}
