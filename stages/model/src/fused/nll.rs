//! Per-position negative log-likelihood `logsumexp(logits) - logits[target]`:
//! the forward reads each row twice (max, then Σ exp), the backward writes
//! `g · (softmax - onehot)` in one pass.

use std::sync::Arc;

use burn::tensor::{Int, Tensor};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{unary, Backward, Ops};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::row_kernels::{row_max, row_scaled_exp_in_place, row_sum_exp};
use super::{f32s, flex_tensor, into_owned, on_flex, record, Fused, Tracked};

/// `logits [b, t, v]`, `targets [b, t]` → NLL `[b, t]` where the fused path applies.
pub fn try_token_nll(logits: Tensor<3>, targets: &Tensor<2, Int>) -> Fused<Tensor<2>, Tensor<3>> {
    let [b, t, vocab] = logits.dims();
    on_flex(
        logits,
        |tracked| tracked_nll(tracked, target_ids(targets, vocab), [b, t]),
        |plain| flex_tensor(forward(plain, &target_ids(targets, vocab), vocab).0, [b, t]),
    )
}

fn target_ids(targets: &Tensor<2, Int>, vocab: usize) -> Arc<[usize]> {
    let data = targets.clone().into_data().convert::<i64>();
    let ids: Vec<usize> = data
        .as_slice::<i64>()
        .expect("converted to i64 above")
        .iter()
        .map(|&id| {
            assert!(
                id >= 0 && (id as usize) < vocab,
                "target id {id} outside the vocabulary of {vocab}"
            );
            id as usize
        })
        .collect();
    ids.into()
}

/// NLL per row and the row's log-sum-exp (kept for the backward pass).
fn forward(logits: &FlexTensor, targets: &[usize], vocab: usize) -> (Vec<f32>, Vec<f32>) {
    f32s(logits)
        .par_chunks(vocab)
        .zip(targets.par_iter())
        .map(|(row, &target)| {
            let max = row_max(row);
            let lse = max + row_sum_exp(row, max).ln();
            (lse - row[target], lse)
        })
        .unzip()
}

#[derive(Debug)]
struct TokenNll;

#[derive(Debug, Clone)]
struct Saved {
    logits: FlexTensor,
    targets: Arc<[usize]>,
    lse: Arc<[f32]>,
    vocab: usize,
}

impl Backward<Flex, 1> for TokenNll {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let Saved {
            logits,
            targets,
            lse,
            vocab,
        } = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let grad = grad.to_contiguous();
            let per_row = f32s(&grad);
            // Nothing reads the logits after this: their buffer becomes the gradient.
            let mut out = into_owned(logits);
            out.try_storage_mut::<f32>()
                .expect("owned")
                .par_chunks_mut(vocab)
                .enumerate()
                .for_each(|(i, row)| {
                    // d nll / d logit_j = softmax_j - [j = target].
                    let g = per_row[i];
                    row_scaled_exp_in_place(row, lse[i], g);
                    row[targets[i]] -= g;
                });
            out
        });
    }
}

fn tracked_nll(logits: Tracked, targets: Arc<[usize]>, [b, t]: [usize; 2]) -> Tracked {
    let (primitive, guard) = logits.into_parts();
    let logits = primitive.to_contiguous();
    let vocab = logits.layout().shape()[2];
    let (nll, lse) = forward(&logits, &targets, vocab);
    record(TokenNll, [guard], flex_tensor(nll, [b, t]), || Saved {
        logits,
        targets,
        lse: lse.into(),
        vocab,
    })
}
