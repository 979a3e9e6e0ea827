//! Per-position negative log-likelihood `logsumexp(logits) - logits[target]`.
//! Training: the forward turns each row of logits into `exp(logit - max)`
//! in place (the logits are not needed again) and the backward scales that
//! into `g · (softmax - onehot)`, so `exp` runs once per logit. Evaluation
//! reads the logits twice (max, then Σ exp) and writes nothing.

use std::sync::Arc;

use burn::tensor::{Int, Tensor};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{unary, Backward, NodeGuard, Ops};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::row_kernels::{row_exp_in_place, row_max, row_sum_exp};
use super::{f32s, flex_tensor, into_owned, on_flex, record, Fused, Tracked};

/// `logits [b, t, v]`, `targets [b, t]` → NLL `[b, t]` where the fused path applies.
pub fn try_token_nll(logits: Tensor<3>, targets: &Tensor<2, Int>) -> Fused<Tensor<2>, Tensor<3>> {
    let [b, t, vocab] = logits.dims();
    on_flex(
        logits,
        |logits, guard| tracked_nll(logits, guard, target_ids(targets, vocab), [b, t]),
        |plain| flex_tensor(forward(plain, &target_ids(targets, vocab), vocab), [b, t]),
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

/// NLL per row, the logits left as they are.
fn forward(logits: &FlexTensor, targets: &[usize], vocab: usize) -> Vec<f32> {
    f32s(logits)
        .par_chunks(vocab)
        .zip(targets.par_iter())
        .map(|(row, &target)| {
            let max = row_max(row);
            max + row_sum_exp(row, max).ln() - row[target]
        })
        .collect()
}

/// NLL per row and each row's Σ exp(logit - max), the logits replaced by
/// `exp(logit - max)` (the softmax numerators the backward pass scales).
fn forward_into_numerators(logits: &mut FlexTensor, targets: &[usize], vocab: usize) -> (Vec<f32>, Vec<f32>) {
    logits
        .try_storage_mut::<f32>()
        .expect("owned")
        .par_chunks_mut(vocab)
        .zip(targets.par_iter())
        .map(|(row, &target)| {
            let (max, target_logit) = (row_max(row), row[target]);
            let sum = row_exp_in_place(row, max);
            (max + sum.ln() - target_logit, sum)
        })
        .unzip()
}

#[derive(Debug)]
struct TokenNll;

#[derive(Debug, Clone)]
struct Saved {
    numerators: FlexTensor,
    sums: Arc<[f32]>,
    targets: Arc<[usize]>,
    vocab: usize,
}

impl Backward<Flex, 1> for TokenNll {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let Saved {
            numerators,
            sums,
            targets,
            vocab,
        } = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let grad = grad.to_contiguous();
            let per_row = f32s(&grad);
            // Nothing reads the numerators after this: their buffer becomes the gradient.
            let mut out = into_owned(numerators);
            out.try_storage_mut::<f32>()
                .expect("owned")
                .par_chunks_mut(vocab)
                .enumerate()
                .for_each(|(i, row)| {
                    // d nll / d logit_j = softmax_j - [j = target].
                    let g = per_row[i];
                    let scale = g / sums[i];
                    row.iter_mut().for_each(|x| *x *= scale);
                    row[targets[i]] -= g;
                });
            out
        });
    }
}

fn tracked_nll(logits: FlexTensor, guard: NodeGuard, targets: Arc<[usize]>, [b, t]: [usize; 2]) -> Tracked {
    let vocab = logits.layout().shape()[2];
    let mut numerators = into_owned(logits);
    let (nll, sums) = forward_into_numerators(&mut numerators, &targets, vocab);
    record(TokenNll, [guard], flex_tensor(nll, [b, t]), || Saved {
        numerators,
        sums: sums.into(),
        targets,
        vocab,
    })
}
