//! Causal self-attention `softmax(scale · Q Kᵀ + mask) · V` as one op, per
//! (batch row, head) on the rayon pool: two matrix products and a row
//! softmax forward; the softmax backward and four products backward.
//!
//! Why: burn composes it from a batched product, a scale, a mask, a softmax
//! and a second product, each output allocated zero-filled, copied once to
//! align it, and (for the heads) transposed into place and back. Here Q, K,
//! V and the output stay in the projections' `[batch, positions, heads,
//! head_dim]` layout (the products read them strided), grouped-query heads
//! read their shared key/value head directly instead of a repeated copy, and
//! the scores become the probabilities in place.

use std::mem::MaybeUninit;
use std::ops::Range;

use burn::tensor::Tensor;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::matrix::{product_into, Dst, View, Write};
use super::row_kernels::{row_softmax_backward_in_place, row_softmax_in_place};
use super::{f32s, flex_tensor, on_flex_all, parent_ids, record, register_all, Fused};

/// `q [batch, t, heads, head_dim]`, `k` and `v` `[batch, past + t,
/// kv_heads, head_dim]` → `[batch, t, heads, head_dim]`; query i (at
/// position past + i) sees keys 0 ..= past + i.
pub fn causal_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f32) -> Fused<Tensor<4>, [Tensor<4>; 3]> {
    let [batch, queries, heads, head_dim] = q.dims();
    let [key_batch, keys, kv_heads, key_dim] = k.dims();
    let fits = k.dims() == v.dims()
        && key_batch == batch
        && key_dim == head_dim
        && keys >= queries
        && kv_heads > 0
        && heads % kv_heads == 0;
    if !fits {
        return Fused::NotApplicable([q, k, v]);
    }
    let shape = Shape {
        batch,
        queries,
        keys,
        heads,
        kv_heads,
        head_dim,
        scale,
    };
    on_flex_all(
        [q, k, v],
        |[q, k, v], guards| {
            let (output, probabilities) = forward(&q, &k, &v, shape);
            record(CausalAttention, guards, output, || Saved {
                q,
                k,
                v,
                probabilities,
                shape,
            })
        },
        |[q, k, v]| forward(q, k, v, shape).0,
    )
}

#[derive(Debug, Clone, Copy)]
struct Shape {
    batch: usize,
    queries: usize,
    keys: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    scale: f32,
}

impl Shape {
    /// Query heads per key/value head.
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Distance between positions in q and in the output.
    fn q_row(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Distance between positions in k and v.
    fn kv_row(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    fn q_start(&self, batch: usize, head: usize) -> usize {
        batch * self.queries * self.q_row() + head * self.head_dim
    }

    fn kv_start(&self, batch: usize, kv_head: usize) -> usize {
        batch * self.keys * self.kv_row() + kv_head * self.head_dim
    }

    /// One (batch row, head)'s probabilities, `[queries, keys]`.
    fn block(&self) -> usize {
        self.queries * self.keys
    }

    fn visible(&self, query: usize) -> usize {
        self.keys - self.queries + query + 1
    }

    /// Blocks of query rows, each with the keys its last row sees: the
    /// products skip the keys every row of a block is masked from.
    fn query_blocks(&self) -> impl DoubleEndedIterator<Item = (Range<usize>, usize)> {
        let s = *self;
        (0..self.queries.div_ceil(QUERY_BLOCK)).map(move |n| {
            let rows = n * QUERY_BLOCK..((n + 1) * QUERY_BLOCK).min(s.queries);
            let seen = s.visible(rows.end - 1);
            (rows, seen)
        })
    }
}

/// Query rows per block of the causal products.
const QUERY_BLOCK: usize = 64;

/// A buffer that parallel tasks write in disjoint parts.
#[derive(Clone, Copy)]
struct Shared(*mut f32);

// SAFETY: every task writes elements no other task touches (see the callers).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// A method, not a field access, so closures capture the `Send` wrapper.
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// The output, and the probabilities `[batch, heads, queries, keys]` (zero
/// where masked) that the backward pass reads.
fn forward(q: &FlexTensor, k: &FlexTensor, v: &FlexTensor, s: Shape) -> (FlexTensor, FlexTensor) {
    let (q, k, v) = (f32s(q), f32s(k), f32s(v));
    let mut output = Vec::<f32>::with_capacity(q.len());
    let out = Shared(output.as_mut_ptr());
    let mut probabilities = Vec::<f32>::with_capacity(s.batch * s.heads * s.block());
    probabilities
        .spare_capacity_mut()
        .par_chunks_mut(s.block())
        .enumerate()
        .for_each(|(index, block)| {
            let (b, head) = (index / s.heads, index % s.heads);
            let kv_start = s.kv_start(b, head / s.group());
            for (rows, seen) in s.query_blocks() {
                let q_start = s.q_start(b, head) + rows.start * s.q_row();
                let part = &mut block[rows.start * s.keys..rows.end * s.keys];
                // SAFETY: `part` is this task's; the product writes its first `seen` columns.
                unsafe {
                    product_into(
                        Dst {
                            ptr: part.as_mut_ptr().cast(),
                            row: s.keys,
                        },
                        rows.len(),
                        seen,
                        s.head_dim,
                        View::rows(&q[q_start..], s.q_row()),
                        View::transposed(&k[kv_start..], s.kv_row()),
                        s.scale,
                        Write::Overwrite,
                    );
                }
                for (i, row) in rows.clone().zip(part.chunks_exact_mut(s.keys)) {
                    row[seen..].fill(MaybeUninit::new(0.0));
                    // SAFETY: the product wrote the first `seen` values, the line above the rest.
                    let row = unsafe { &mut *(row as *mut [MaybeUninit<f32>] as *mut [f32]) };
                    let visible = s.visible(i);
                    row_softmax_in_place(&mut row[..visible]);
                    row[visible..seen].fill(0.0);
                }
                // SAFETY: every value of `part` was written above; the output
                // rows of head `head` of row `b` are this task's alone.
                unsafe {
                    let part = &*(part as *const [MaybeUninit<f32>] as *const [f32]);
                    product_into(
                        Dst {
                            ptr: out.at(q_start),
                            row: s.q_row(),
                        },
                        rows.len(),
                        s.head_dim,
                        seen,
                        View::rows(part, s.keys),
                        View::rows(&v[kv_start..], s.kv_row()),
                        1.0,
                        Write::Overwrite,
                    );
                }
            }
        });
    // SAFETY: the tasks above wrote every block and every (row, head) part.
    unsafe {
        probabilities.set_len(s.batch * s.heads * s.block());
        output.set_len(q.len());
    }
    (
        flex_tensor(output, [s.batch, s.queries, s.heads, s.head_dim]),
        flex_tensor(probabilities, [s.batch, s.heads, s.queries, s.keys]),
    )
}

/// Gradients of q, k and v given the output's.
fn backward(saved: &Saved, d_out: &FlexTensor) -> [FlexTensor; 3] {
    let s = saved.shape;
    let (q, k, v) = (f32s(&saved.q), f32s(&saved.k), f32s(&saved.v));
    let (p, d_out) = (f32s(&saved.probabilities), f32s(d_out));
    let mut dq = Vec::<f32>::with_capacity(q.len());
    let mut dk = Vec::<f32>::with_capacity(k.len());
    let mut dv = Vec::<f32>::with_capacity(v.len());
    let (dq_at, dk_at, dv_at) = (
        Shared(dq.as_mut_ptr()),
        Shared(dk.as_mut_ptr()),
        Shared(dv.as_mut_ptr()),
    );
    // One task per key/value head: its query heads add into the same dK, dV.
    (0..s.batch * s.kv_heads).into_par_iter().for_each(|index| {
        let (b, kv_head) = (index / s.kv_heads, index % s.kv_heads);
        let kv_start = s.kv_start(b, kv_head);
        let (k, v) = (&k[kv_start..], &v[kv_start..]);
        let mut d_scores = vec![0.0f32; QUERY_BLOCK * s.keys];
        for n in 0..s.group() {
            let head = kv_head * s.group() + n;
            let p = &p[(b * s.heads + head) * s.block()..][..s.block()];
            // The last block first: it sees every key, so it overwrites all
            // of dK and dV (for the group's first head) and the rest add.
            for (step, (rows, seen)) in s.query_blocks().rev().enumerate() {
                let write = if n == 0 && step == 0 {
                    Write::Overwrite
                } else {
                    Write::Accumulate
                };
                let q_start = s.q_start(b, head) + rows.start * s.q_row();
                let d_out = View::rows(&d_out[q_start..], s.q_row());
                let p = &p[rows.start * s.keys..rows.end * s.keys];
                let d_scores = &mut d_scores[..rows.len() * s.keys];
                // SAFETY: `d_scores` is this task's. dQ's rows of (row, head),
                // and dK's, dV's (row, kv head) parts, are this task's alone.
                unsafe {
                    // ∂P = ∂O · Vᵀ over the keys the block sees.
                    product_into(
                        Dst {
                            ptr: d_scores.as_mut_ptr(),
                            row: s.keys,
                        },
                        rows.len(),
                        seen,
                        s.head_dim,
                        d_out,
                        View::transposed(v, s.kv_row()),
                        1.0,
                        Write::Overwrite,
                    );
                }
                // ∂S = scale · P ⊙ (∂P - ⟨∂P, P⟩) per row; 0 at hidden keys.
                for (i, (g, p)) in rows
                    .clone()
                    .zip(d_scores.chunks_exact_mut(s.keys).zip(p.chunks_exact(s.keys)))
                {
                    let visible = s.visible(i);
                    row_softmax_backward_in_place(&p[..visible], &mut g[..visible], s.scale);
                    g[visible..seen].fill(0.0);
                }
                let d_scores = &*d_scores;
                let products = [
                    // ∂Q = ∂S · K
                    (
                        dq_at.at(q_start),
                        s.q_row(),
                        rows.len(),
                        seen,
                        View::rows(d_scores, s.keys),
                        View::rows(k, s.kv_row()),
                        Write::Overwrite,
                    ),
                    // ∂K (+)= ∂Sᵀ · Q
                    (
                        dk_at.at(kv_start),
                        s.kv_row(),
                        seen,
                        rows.len(),
                        View::transposed(d_scores, s.keys),
                        View::rows(&q[q_start..], s.q_row()),
                        write,
                    ),
                    // ∂V (+)= Pᵀ · ∂O
                    (
                        dv_at.at(kv_start),
                        s.kv_row(),
                        seen,
                        rows.len(),
                        View::transposed(p, s.keys),
                        d_out,
                        write,
                    ),
                ];
                for (ptr, row, m, inner, lhs, rhs, write) in products {
                    // SAFETY: as above.
                    unsafe { product_into(Dst { ptr, row }, m, s.head_dim, inner, lhs, rhs, 1.0, write) };
                }
            }
        }
    });
    // SAFETY: every (row, head) part of dQ and (row, kv head) part of dK, dV
    // was written above.
    unsafe {
        dq.set_len(q.len());
        dk.set_len(k.len());
        dv.set_len(v.len());
    }
    let kv_shape = [s.batch, s.keys, s.kv_heads, s.head_dim];
    [
        flex_tensor(dq, [s.batch, s.queries, s.heads, s.head_dim]),
        flex_tensor(dk, kv_shape),
        flex_tensor(dv, kv_shape),
    ]
}

#[derive(Debug)]
struct CausalAttention;

#[derive(Debug, Clone)]
struct Saved {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    probabilities: FlexTensor,
    shape: Shape,
}

impl Backward<Flex, 3> for CausalAttention {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let d_out = grads.consume::<Flex>(&ops.node).to_contiguous();
        register_all(parent_ids(&ops), grads, backward(&ops.state, &d_out));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llama::composed_attention;
    use burn::tensor::{Device, TensorData};

    fn values(tensor: Tensor<4>) -> Vec<f32> {
        tensor.into_data().try_to_vec::<f32>().unwrap()
    }

    fn filled(shape: [usize; 4], seed: usize) -> Vec<f32> {
        let n: usize = shape.iter().product();
        (0..n)
            .map(|i| (((i + seed) * 7919 % 97) as f32 - 48.0) * 0.03)
            .collect()
    }

    /// Value and all three gradients equal burn's composed ops, with grouped
    /// heads (4 query heads on 2 key/value heads), with and without earlier
    /// positions (a KV cache), over one block of query rows and several, and
    /// the untracked path gives the same values.
    #[test]
    fn equals_the_composed_ops_in_value_and_every_gradient() {
        let device = Device::flex();
        let ad = device.clone().autodiff();
        for (batch, queries, keys) in [(2, 5, 5), (2, 3, 7), (1, 1, 4), (2, 130, 130), (1, 70, 75)] {
            let (heads, kv_heads, head_dim) = (4, 2, 6);
            let q_shape = [batch, queries, heads, head_dim];
            let kv_shape = [batch, keys, kv_heads, head_dim];
            let (q, k, v) = (filled(q_shape, 1), filled(kv_shape, 2), filled(kv_shape, 3));
            let upstream = filled(q_shape, 4);
            let scale = 1.0 / (head_dim as f32).sqrt();
            let run = |fused: bool| {
                let tensor = |values: &Vec<f32>, shape: [usize; 4]| {
                    Tensor::<4>::from_data(TensorData::new(values.clone(), shape), &ad).require_grad()
                };
                let (tq, tk, tv) = (tensor(&q, q_shape), tensor(&k, kv_shape), tensor(&v, kv_shape));
                let out = if fused {
                    causal_attention(tq.clone(), tk.clone(), tv.clone(), scale).done()
                } else {
                    composed_attention(tq.clone(), tk.clone(), tv.clone(), scale, None)
                };
                let weights = Tensor::<4>::from_data(TensorData::new(upstream.clone(), q_shape), &ad);
                let grads = (out.clone() * weights).sum().backward();
                let grad = |t: &Tensor<4>| values(t.grad(&grads).expect("a gradient"));
                [values(out), grad(&tq), grad(&tk), grad(&tv)]
            };
            let fused = run(true);
            let composed = run(false);
            for (name, got, want) in ["value", "d q", "d k", "d v"]
                .iter()
                .zip(&fused)
                .zip(&composed)
                .map(|((n, g), w)| (n, g, w))
            {
                for (g, w) in got.iter().zip(want) {
                    assert!(
                        (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                        "{name} ({batch}, {queries}, {keys}): {g} vs {w}"
                    );
                }
            }
            let plain = |values: &Vec<f32>, shape: [usize; 4]| {
                Tensor::<4>::from_data(TensorData::new(values.clone(), shape), &device)
            };
            let untracked = causal_attention(plain(&q, q_shape), plain(&k, kv_shape), plain(&v, kv_shape), scale);
            assert_eq!(values(untracked.done()), fused[0]);
        }
    }

    /// A later key must not change an earlier query's output.
    #[test]
    fn a_query_does_not_see_later_keys() {
        let device = Device::flex();
        let shape = [1, 4, 2, 3];
        let tensor = |values: Vec<f32>| Tensor::<4>::from_data(TensorData::new(values, shape), &device);
        let (q, k, mut v) = (filled(shape, 5), filled(shape, 6), filled(shape, 7));
        let before = values(causal_attention(tensor(q.clone()), tensor(k.clone()), tensor(v.clone()), 0.5).done());
        // Change the last position's value vectors only.
        let last = v.len() - 6;
        v[last..].iter_mut().for_each(|x| *x += 10.0);
        let after = values(causal_attention(tensor(q), tensor(k), tensor(v), 0.5).done());
        assert_eq!(before[..last], after[..last]);
        assert_ne!(before[last..], after[last..]);
    }
}
