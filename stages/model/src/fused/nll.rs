//! Per-position negative log-likelihood `logsumexp(logits) - logits[target]`:
//! the forward reads each row twice (max, then Σ exp), the backward writes
//! `g · (softmax - onehot)` in one pass.

use std::sync::Arc;

use burn::tensor::{DType, Int, Tensor, TensorData};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn_autodiff::Autodiff;
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::row_kernels::{row_max, row_scaled_exp, row_sum_exp};
use super::{Fused, Tracked};

/// `logits [b, t, v]`, `targets [b, t]` → NLL `[b, t]` where the fused path applies.
pub fn try_token_nll(logits: Tensor<3>, targets: &Tensor<2, Int>) -> Fused<Tensor<2>, Tensor<3>> {
    if logits.dtype() != DType::F32 {
        return Fused::NotApplicable(logits);
    }
    let [b, t, v] = logits.dims();
    if let Ok(tracked) = logits.clone().try_into_primitive::<Autodiff<Flex>>() {
        let targets = target_ids(targets, v);
        return Fused::Done(Tensor::from_primitive::<Autodiff<Flex>>(tracked_nll(
            tracked,
            targets,
            [b, t],
        )));
    }
    if let Ok(plain) = logits.clone().try_into_primitive::<Flex>() {
        let targets = target_ids(targets, v);
        let (nll, _) = forward(&plain.to_contiguous(), &targets, v);
        return Fused::Done(Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(
            nll,
            [b, t],
        ))));
    }
    Fused::NotApplicable(logits)
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
    let rows = logits.as_slice::<f32>().expect("contiguous f32 logits");
    let (nll, lse): (Vec<f32>, Vec<f32>) = rows
        .par_chunks(vocab)
        .zip(targets.par_iter())
        .map(|(row, &target)| {
            let max = row_max(row);
            let lse = max + row_sum_exp(row, max).ln();
            (lse - row[target], lse)
        })
        .unzip();
    (nll, lse)
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
        let saved = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let grad = grad.to_contiguous();
            let per_row = grad.as_slice::<f32>().expect("contiguous f32 gradient");
            let logits = saved.logits.as_slice::<f32>().expect("contiguous f32 logits");
            let mut out = vec![0.0f32; logits.len()];
            out.par_chunks_mut(saved.vocab)
                .zip(logits.par_chunks(saved.vocab))
                .enumerate()
                .for_each(|(i, (out, row))| {
                    // d nll / d logit_j = softmax_j - [j = target].
                    let g = per_row[i];
                    row_scaled_exp(row, saved.lse[i], g, out);
                    out[saved.targets[i]] -= g;
                });
            FlexTensor::from_data(TensorData::new(out, saved.logits.layout().shape().clone()))
        });
    }
}

fn tracked_nll(logits: Tracked, targets: Arc<[usize]>, [b, t]: [usize; 2]) -> Tracked {
    let vocab = logits.primitive().layout().shape()[2];
    let (primitive, guard) = logits.into_parts();
    let primitive = primitive.to_contiguous();
    let (nll, lse) = forward(&primitive, &targets, vocab);
    let output = FlexTensor::from_data(TensorData::new(nll, [b, t]));
    match TokenNll.prepare::<NoCheckpointing>([guard]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let saved = Saved {
                logits: primitive,
                targets,
                lse: lse.into(),
                vocab,
            };
            prep.finish(saved, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}
