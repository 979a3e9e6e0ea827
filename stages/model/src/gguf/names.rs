//! llama.cpp's tensor names and HF's, and the Q/K row permutation.
//!
//! `convert_hf_to_gguf.py` reorders the rows of `q_proj` and `k_proj`
//! (weights and biases) from HF's half-split rotary layout to the
//! interleaved one llama.cpp computes with: per head, the rows
//! `[half, pair]` become `[pair, half]` (`reshape(heads, 2, hd/2, ...)
//! .swapaxes(1, 2)`). Import undoes it; export redoes it. K uses the
//! key/value head count.

/// (HF suffix after `model.layers.{i}.`, llama.cpp suffix after `blk.{i}.`)
const LAYER: &[(&str, &str)] = &[
    ("input_layernorm.weight", "attn_norm.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.bias", "attn_v.bias"),
    ("self_attn.o_proj.bias", "attn_output.bias"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
    ("mlp.gate_proj.bias", "ffn_gate.bias"),
    ("mlp.up_proj.bias", "ffn_up.bias"),
    ("mlp.down_proj.bias", "ffn_down.bias"),
];

const GLOBAL: &[(&str, &str)] = &[
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// The HF name of a llama.cpp tensor, `None` for one HF has no place for.
pub fn hf_name(gguf: &str) -> Option<String> {
    if let Some((hf, _)) = GLOBAL.iter().find(|(_, g)| *g == gguf) {
        return Some(hf.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (hf, _) = LAYER.iter().find(|(_, g)| *g == suffix)?;
    Some(format!("model.layers.{layer}.{hf}"))
}

/// The llama.cpp name of an HF tensor.
pub fn gguf_name(hf: &str) -> Option<String> {
    if let Some((_, g)) = GLOBAL.iter().find(|(h, _)| *h == hf) {
        return Some(g.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (_, g) = LAYER.iter().find(|(h, _)| *h == suffix)?;
    Some(format!("blk.{layer}.{g}"))
}

/// The number of heads whose rows a tensor's permutation runs over: query
/// heads for Q, key/value heads for K, `None` for every other tensor.
pub fn permuted_heads(hf: &str, heads: usize, kv_heads: usize) -> Option<usize> {
    if hf.ends_with("q_proj.weight") || hf.ends_with("q_proj.bias") {
        Some(heads)
    } else if hf.ends_with("k_proj.weight") || hf.ends_with("k_proj.bias") {
        Some(kv_heads)
    } else {
        None
    }
}

/// Rows of `data` (`rows × cols`, row-major) reordered per head from
/// `[a, b]` to `[b, a]`, where a head's `hd` rows are `a × b`: with
/// `(a, b) = (2, hd/2)` this is llama.cpp's permutation (HF → GGUF), with
/// `(hd/2, 2)` its inverse.
fn swap_row_blocks(data: &[f32], rows: usize, cols: usize, heads: usize, a: usize) -> Vec<f32> {
    let hd = rows / heads;
    let b = hd / a;
    let mut out = vec![0f32; data.len()];
    for h in 0..heads {
        for i in 0..a {
            for j in 0..b {
                let from = h * hd + i * b + j;
                let to = h * hd + j * a + i;
                out[to * cols..(to + 1) * cols].copy_from_slice(&data[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

/// HF → llama.cpp rows (`convert_hf_to_gguf.py`'s `permute`).
pub fn permute(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    swap_row_blocks(data, rows, cols, heads, 2)
}

/// llama.cpp → HF rows.
pub fn unpermute(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let hd = rows / heads;
    swap_row_blocks(data, rows, cols, heads, hd / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for (hf, gguf) in [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.layers.7.self_attn.k_proj.weight", "blk.7.attn_k.weight"),
            (
                "model.layers.0.post_attention_layernorm.weight",
                "blk.0.ffn_norm.weight",
            ),
            ("model.layers.3.mlp.down_proj.bias", "blk.3.ffn_down.bias"),
            ("lm_head.weight", "output.weight"),
        ] {
            assert_eq!(gguf_name(hf).as_deref(), Some(gguf));
            assert_eq!(hf_name(gguf).as_deref(), Some(hf));
        }
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }

    #[test]
    fn the_permutation_matches_convert_hf_to_gguf_and_undoes() {
        // One head of 4 rows, 1 column: HF [r0 r1 | r2 r3] (two halves)
        // becomes [r0 r2 r1 r3] (pairs interleaved), as the numpy reshape does.
        let hf = [0.0, 1.0, 2.0, 3.0];
        assert_eq!(permute(&hf, 4, 1, 1), vec![0.0, 2.0, 1.0, 3.0]);
        // Two heads of 6 rows, 2 columns: round trip.
        let data: Vec<f32> = (0..24).map(|x| x as f32).collect();
        let there = permute(&data, 12, 2, 2);
        assert_ne!(there, data);
        assert_eq!(unpermute(&there, 12, 2, 2), data);
    }
}
