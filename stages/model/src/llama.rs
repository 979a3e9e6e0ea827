//! The LLaMA architecture in burn 0.22 (run-time `Device`, no backend type
//! parameter): token embedding, RMSNorm, rotary position embedding in HF's
//! half-split layout, grouped-query attention, SwiGLU MLP, tied or untied
//! head, causal mask. Weights are kept in HF's layout (`[out, in]` for
//! projections), so checkpoints load without permutations.

use babelflow_stage::rng::Rng;
use burn::module::{Module, Param};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Bool, DType, Device, Int, Tensor, TensorData};

use crate::config::{inverse_frequencies, LlamaConfig};
use crate::fused::attention::causal_attention;
use crate::fused::projection::{project, project_frozen};
use crate::fused::rms_norm::rms_norm;
use crate::fused::rope::{rotate, RopeTables};
use crate::fused::swiglu::swiglu;
use crate::precision::in_dtype;

/// A projection with HF's weight layout `[out, in]`, and a bias where the
/// config asks for one (`attention_bias`, `mlp_bias`).
#[derive(Module, Debug)]
pub struct Proj {
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
}

/// A `[rows, cols]` tensor of N(0, std²) values drawn by `rng`.
fn normal(shape: [usize; 2], std: f64, rng: &mut Rng, device: &Device) -> Tensor<2> {
    let values = rng.normals(shape[0] * shape[1], std);
    Tensor::from_data(TensorData::new(values, shape), device)
}

impl Proj {
    /// `[out, inp]` drawn from N(0, std²) by `rng`.
    pub fn new(out: usize, inp: usize, std: f64, rng: &mut Rng, device: &Device) -> Self {
        Proj {
            weight: Param::from_tensor(normal([out, inp], std, rng, device)),
            bias: None,
        }
    }

    /// With a zero bias (HF initialises biases to zero), when `bias`.
    pub fn with_bias(mut self, bias: bool, device: &Device) -> Self {
        if bias {
            let [out, _] = self.weight.val().dims();
            self.bias = Some(Param::from_tensor(Tensor::zeros([out], device)));
        }
        self
    }

    /// `x @ Wᵀ (+ b)` over the last dimension.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let [out, _] = self.weight.base().dims();
        let y = project_param(x.reshape([b * t, d]), &self.weight).reshape([b, t, out]);
        match &self.bias {
            Some(bias) => y + bias.val().unsqueeze::<3>(),
            None => y,
        }
    }
}

/// `x [rows, in] · Wᵀ` for a weight parameter `[out, in]`. A frozen weight
/// (held in f32 or bf16) goes through [`project_frozen`]; a LoRA adapter
/// adds its low-rank path `scale · (x · Bᵀ) · Aᵀ` beside the frozen base,
/// as PEFT does, instead of composing the dense `base + scale · A · B`
/// (which autodiff would keep for the backward pass, in f32, with a full
/// weight-shaped gradient to compute).
pub fn project_param(x: Tensor<2>, weight: &Param<Tensor<2>>) -> Tensor<2> {
    // Other backends and dtypes: the weight meets `x` in its dtype.
    let composed = |[x, w]: [Tensor<2>; 2]| {
        let dtype = x.dtype();
        x.matmul(in_dtype(w, dtype).transpose())
    };
    if weight.is_require_grad() {
        return project(x, weight.val()).or_else(composed);
    }
    match weight.adapter() {
        None => project_frozen(x, weight.val()).or_else(composed),
        Some(adapter) => {
            let base = project_frozen(x.clone(), weight.base()).or_else(composed);
            let down = project(x, adapter.b.val()).or_else(composed);
            let up = project(down, adapter.a.val()).or_else(composed);
            base + up.mul_scalar(adapter.scale)
        }
    }
}

#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: Param<Tensor<1>>,
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(d: usize, eps: f64, device: &Device) -> Self {
        RmsNorm {
            weight: Param::from_tensor(Tensor::ones([d], device)),
            eps,
        }
    }

    /// Normalised in f32 whatever the weights' dtype (as transformers does).
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        rms_norm(x, self.weight.val().unsqueeze(), self.eps as f32).or_else(|[x, weight]| {
            let x = in_dtype(x, DType::F32);
            let rms = (x.clone().square().mean_dim(2) + self.eps).sqrt();
            in_dtype(x / rms, weight.dtype()) * weight
        })
    }
}

#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Proj,
    pub k_proj: Proj,
    pub v_proj: Proj,
    pub o_proj: Proj,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// One layer's cached keys and values, once it has any.
pub type LayerCache = Option<(Tensor<4>, Tensor<4>)>;

/// Keys and values of earlier positions, per layer, for generation
/// (`[batch, positions, kv_heads, head_dim]` each).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub layers: Vec<LayerCache>,
}

impl KvCache {
    pub fn new(layers: usize) -> Self {
        KvCache {
            layers: vec![None; layers],
        }
    }

    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|(k, _)| k.dims()[1])
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// cos and sin tables `[positions, head_dim]` (frequencies repeated twice, as HF).
pub struct Rope {
    cos: Tensor<2>,
    sin: Tensor<2>,
    /// The same values on the host, for the fused CPU rotation.
    tables: RopeTables,
}

impl Rope {
    pub fn new(config: &LlamaConfig, max_positions: usize, device: &Device) -> Result<Self, String> {
        config.check_positions(max_positions)?;
        let inv = inverse_frequencies(config, max_positions)?;
        let hd = config.head_dim();
        let mut cos = Vec::with_capacity(max_positions * hd);
        let mut sin = Vec::with_capacity(max_positions * hd);
        for p in 0..max_positions {
            // HF repeats the frequencies for both halves of the head.
            for _half in 0..2 {
                for f in &inv {
                    let angle = p as f64 * f;
                    cos.push(angle.cos() as f32);
                    sin.push(angle.sin() as f32);
                }
            }
        }
        Ok(Rope {
            cos: Tensor::from_data(TensorData::new(cos.clone(), [max_positions, hd]), device),
            sin: Tensor::from_data(TensorData::new(sin.clone(), [max_positions, hd]), device),
            tables: RopeTables {
                cos: cos.into(),
                sin: sin.into(),
                head_dim: hd,
            },
        })
    }

    /// Rotates `x: [batch, t, heads, head_dim]` for positions `start..start + t`.
    pub fn apply(&self, x: Tensor<4>, start: usize) -> Tensor<4> {
        rotate(x, &self.tables, start).or_else(|x| self.composed(x, start))
    }

    #[cfg(test)]
    pub(crate) fn tables(&self) -> &RopeTables {
        &self.tables
    }

    /// [`Rope::apply`] from burn's own ops (other backends and dtypes).
    pub(crate) fn composed(&self, x: Tensor<4>, start: usize) -> Tensor<4> {
        let [_, t, _, hd] = x.dims();
        let dtype = x.dtype();
        let cos = in_dtype(self.cos.clone().narrow(0, start, t), dtype).reshape([1, t, 1, hd]);
        let sin = in_dtype(self.sin.clone().narrow(0, start, t), dtype).reshape([1, t, 1, hd]);
        let x1 = x.clone().narrow(3, 0, hd / 2);
        let x2 = x.clone().narrow(3, hd / 2, hd / 2);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * cos + rotated * sin
    }
}

impl Attention {
    /// `padding` (`[batch, past + t]`, true at padding keys) hides the left
    /// padding of batched prompts of different lengths.
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        cache: Option<&mut LayerCache>,
        padding: Option<&Tensor<2, Bool>>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (h, kv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        // [batch, positions, heads, head_dim], the projections' own layout.
        let q = self.q_proj.forward(x.clone()).reshape([b, t, h, hd]);
        let k = self.k_proj.forward(x.clone()).reshape([b, t, kv, hd]);
        let v = self.v_proj.forward(x).reshape([b, t, kv, hd]);
        let past = cache
            .as_ref()
            .and_then(|c| c.as_ref())
            .map(|(k, _)| k.dims()[1])
            .unwrap_or(0);
        let q = rope.apply(q, past);
        let k = rope.apply(k, past);
        let (k, v) = match cache {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some((pk, pv)) => (Tensor::cat(vec![pk, k], 1), Tensor::cat(vec![pv, v], 1)),
                    None => (k, v),
                };
                *slot = Some((k.clone(), v.clone()));
                (k, v)
            }
            None => (k, v),
        };
        let scale = (1.0 / (hd as f64).sqrt()) as f32;
        let out = match padding {
            None => causal_attention(q, k, v, scale).or_else(|[q, k, v]| composed_attention(q, k, v, scale, None)),
            Some(pad) => composed_attention(q, k, v, scale, Some(pad)),
        };
        self.o_proj.forward(out.reshape([b, t, h * hd]))
    }
}

/// Attention from burn's own ops: where [`causal_attention`] does not apply
/// (other backends, other dtypes) and for left-padded batches. `q [b, t, h,
/// hd]`, `k`, `v` `[b, past + t, kv, hd]` → `[b, t, h, hd]`; `padding`
/// (`[b, past + t]`) is true at padding keys.
pub(crate) fn composed_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    scale: f32,
    padding: Option<&Tensor<2, Bool>>,
) -> Tensor<4> {
    let [b, t, h, hd] = q.dims();
    let [_, total, kv, _] = k.dims();
    let past = total - t;
    let (q, k, v) = (q.swap_dims(1, 2), k.swap_dims(1, 2), v.swap_dims(1, 2));
    // Grouped-query attention: each key/value head serves h / kv query heads.
    let rep = h / kv;
    let repeat = |x: Tensor<4>| match rep {
        1 => x,
        _ => x
            .unsqueeze_dim::<5>(2)
            .expand([b, kv, rep, total, hd])
            .reshape([b, h, total, hd]),
    };
    let (k, v) = (repeat(k), repeat(v));
    // Masked and normalised in f32 whatever the weights' dtype.
    let scores = in_dtype(q.matmul(k.swap_dims(2, 3)), DType::F32) * scale;
    let mask = causal_mask(t, past, &scores.device()).unsqueeze::<4>();
    let probabilities = match padding {
        None => softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3),
        // Finite, so a padding query that may see only padding keys gets
        // a harmless uniform row instead of NaN (exp still gives 0 for
        // the real rows' hidden keys).
        Some(pad) => {
            let pad = pad.clone().reshape([b, 1, 1, total]).expand([b, h, t, total]);
            let mask = mask.expand([b, h, t, total]).bool_or(pad);
            softmax(scores.mask_fill(mask, -1.0e9), 3)
        }
    };
    in_dtype(probabilities, v.dtype()).matmul(v).swap_dims(1, 2)
}

/// `[t, past + t]`, true where query i (at position past + i) may not look
/// (key j > past + i). burn's `tril_mask` marks what lies above the
/// diagonal at `offset`, the part a lower-triangular keep-mask removes.
fn causal_mask(t: usize, past: usize, device: &Device) -> Tensor<2, Bool> {
    Tensor::<2, Bool>::tril_mask([t, past + t], past as i64, device)
}

#[derive(Module, Debug)]
pub struct Mlp {
    pub gate_proj: Proj,
    pub up_proj: Proj,
    pub down_proj: Proj,
}

impl Mlp {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = self.gate_proj.forward(x.clone());
        let up = self.up_proj.forward(x);
        let hidden = swiglu(gate, up).or_else(|[gate, up]| silu(gate) * up);
        self.down_proj.forward(hidden)
    }
}

#[derive(Module, Debug)]
pub struct Block {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

impl Block {
    /// The decoder block: pre-norm attention and pre-norm MLP, each added
    /// to the residual stream.
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        cache: Option<&mut LayerCache>,
        padding: Option<&Tensor<2, Bool>>,
    ) -> Tensor<3> {
        let h = x.clone()
            + self
                .self_attn
                .forward(self.input_layernorm.forward(x), rope, cache, padding);
        h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h))
    }
}

#[derive(Module, Debug)]
pub struct Llama {
    pub embed_tokens: Param<Tensor<2>>,
    /// Rows after `embed_tokens`' own, held apart so that they alone train
    /// (`trainable: new-embeddings`): the vocabulary is `embed_tokens`'
    /// rows, then these. `None` everywhere but in such a training run;
    /// saving joins them back.
    pub embed_added: Option<Param<Tensor<2>>>,
    pub layers: Vec<Block>,
    pub norm: RmsNorm,
    /// `None` when the head is tied to the embeddings.
    pub lm_head: Option<Proj>,
    /// The untied head's rows for `embed_added`'s tokens, held apart likewise.
    pub lm_head_added: Option<Param<Tensor<2>>>,
}

impl Llama {
    /// A randomly initialised model (normal, std 0.02, as HF's
    /// `initializer_range`), drawn from `seed` alone: not from the
    /// backend's generator, which is one per process and shared with
    /// whatever else runs in it.
    pub fn init(config: &LlamaConfig, seed: u64, device: &Device) -> Self {
        let (d, hd) = (config.hidden_size, config.head_dim());
        let (h, kv) = (config.num_attention_heads, config.kv_heads());
        let std = 0.02;
        let rng = &mut Rng::new(seed);
        let layers = (0..config.num_hidden_layers)
            .map(|_| Block {
                input_layernorm: RmsNorm::new(d, config.rms_norm_eps, device),
                self_attn: Attention {
                    q_proj: Proj::new(h * hd, d, std, rng, device).with_bias(config.attention_bias, device),
                    k_proj: Proj::new(kv * hd, d, std, rng, device).with_bias(config.attention_bias, device),
                    v_proj: Proj::new(kv * hd, d, std, rng, device).with_bias(config.attention_bias, device),
                    o_proj: Proj::new(d, h * hd, std, rng, device).with_bias(config.attention_bias, device),
                    n_heads: h,
                    n_kv_heads: kv,
                    head_dim: hd,
                },
                post_attention_layernorm: RmsNorm::new(d, config.rms_norm_eps, device),
                mlp: Mlp {
                    gate_proj: Proj::new(config.intermediate_size, d, std, rng, device)
                        .with_bias(config.mlp_bias, device),
                    up_proj: Proj::new(config.intermediate_size, d, std, rng, device)
                        .with_bias(config.mlp_bias, device),
                    down_proj: Proj::new(d, config.intermediate_size, std, rng, device)
                        .with_bias(config.mlp_bias, device),
                },
            })
            .collect();
        let embed = normal([config.vocab_size, d], std, rng, device);
        Llama {
            embed_tokens: Param::from_tensor(embed),
            embed_added: None,
            layers,
            norm: RmsNorm::new(d, config.rms_norm_eps, device),
            lm_head: (!config.tie_word_embeddings).then(|| Proj::new(config.vocab_size, d, std, rng, device)),
            lm_head_added: None,
        }
    }

    /// Logits `[batch, t, vocab]` for token ids `[batch, t]`; with a cache,
    /// `ids` are the new positions after the cached ones.
    pub fn forward(&self, ids: Tensor<2, Int>, rope: &Rope, cache: Option<&mut KvCache>) -> Tensor<3> {
        self.forward_padded(ids, rope, cache, None)
    }

    /// `forward` for left-padded batches: `padding` is `[batch, past + t]`,
    /// true at padding positions. Rotary attention depends only on relative
    /// positions, so a row shifted right by its padding scores as it would alone.
    pub fn forward_padded(
        &self,
        ids: Tensor<2, Int>,
        rope: &Rope,
        mut cache: Option<&mut KvCache>,
        padding: Option<&Tensor<2, Bool>>,
    ) -> Tensor<3> {
        let mut x = self.embed(ids);
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(x, rope, slot, padding);
        }
        self.head(x)
    }

    /// The token embeddings of `ids` `[batch, t]` → `[batch, t, d]`.
    pub fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [b, t] = ids.dims();
        let [first, d] = self.embed_tokens.base().dims();
        let ids = ids.reshape([b * t]);
        // Activations compute in the dtype the final norm is held in: the
        // evaluation's precision, or f32 while training, where frozen
        // weights (the embeddings among them) may be held in bf16.
        let dtype = self.norm.weight.val().dtype();
        let rows = match &self.embed_added {
            None => in_dtype(self.embed_tokens.val().select(0, ids), dtype),
            Some(added) => {
                // Each id from the part that holds its row; the other
                // part's (clamped) lookup is masked away, gradient included.
                let is_added = ids.clone().greater_equal_elem(first as i64);
                let own = self
                    .embed_tokens
                    .val()
                    .select(0, ids.clone().clamp_max(first as i64 - 1));
                let more = added.val().select(0, (ids - first as i64).clamp_min(0));
                in_dtype(own, dtype)
                    .mask_where(is_added.unsqueeze_dim::<2>(1).expand([b * t, d]), in_dtype(more, dtype))
            }
        };
        rows.reshape([b, t, d])
    }

    /// Logits `[batch, t, vocab]`, in f32, from the last block's output.
    pub fn head(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let x = self.norm.forward(x);
        let (first, added) = match &self.lm_head {
            Some(head) => (&head.weight, self.lm_head_added.as_ref()),
            None => (&self.embed_tokens, self.embed_added.as_ref()),
        };
        let x = x.reshape([b * t, d]);
        let logits = match added {
            None => project_param(x, first),
            Some(added) => Tensor::cat(vec![project_param(x.clone(), first), project_param(x, added)], 1),
        };
        let [_, v] = logits.dims();
        let logits = logits.reshape([b, t, v]);
        // Log-probabilities are taken in f32 whatever the weights' dtype.
        in_dtype(logits, DType::F32)
    }
}
