//! `softmax(scale · scores)` over the keys each query may see (key j ≤
//! past + i for query i): scaling, the causal mask and the softmax in one
//! pass per row; the backward is `scale · p ⊙ (g - ⟨g, p⟩)` in one more.
//! Hidden keys get probability 0 and gradient 0.

use burn::tensor::Tensor;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{unary, Backward, Ops};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::row_kernels::{row_softmax, row_softmax_backward};
use super::{f32s, flex_tensor, on_flex, record, Fused, Tracked};

/// `scores [b, h, t, past + t]` → attention probabilities of the same shape.
pub fn causal_softmax(scores: Tensor<4>, scale: f32, past: usize) -> Fused<Tensor<4>, Tensor<4>> {
    let [_, _, t, keys] = scores.dims();
    if keys != past + t {
        return Fused::NotApplicable(scores);
    }
    let rows = Rows {
        queries: t,
        past,
        keys,
        scale,
    };
    on_flex(
        scores,
        |tracked| tracked_softmax(tracked, rows),
        |plain| forward(plain, rows),
    )
}

/// The shape of the problem: which keys row r (query r mod t) may see.
#[derive(Debug, Clone, Copy)]
struct Rows {
    queries: usize,
    past: usize,
    keys: usize,
    scale: f32,
}

impl Rows {
    fn visible(&self, row: usize) -> usize {
        self.past + row % self.queries + 1
    }
}

fn forward(scores: &FlexTensor, rows: Rows) -> FlexTensor {
    let input = f32s(scores);
    let mut out = vec![0.0f32; input.len()];
    out.par_chunks_mut(rows.keys)
        .zip(input.par_chunks(rows.keys))
        .enumerate()
        .for_each(|(r, (out, row))| {
            let visible = rows.visible(r);
            row_softmax(&row[..visible], rows.scale, &mut out[..visible]);
        });
    flex_tensor(out, scores.layout().shape().clone())
}

#[derive(Debug)]
struct CausalSoftmax;

#[derive(Debug, Clone)]
struct Saved {
    probabilities: FlexTensor,
    rows: Rows,
}

impl Backward<Flex, 1> for CausalSoftmax {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let Saved { probabilities, rows } = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let grad = grad.to_contiguous();
            let p = f32s(&probabilities);
            let mut out = vec![0.0f32; p.len()];
            out.par_chunks_mut(rows.keys)
                .zip(p.par_chunks(rows.keys).zip(f32s(&grad).par_chunks(rows.keys)))
                .enumerate()
                .for_each(|(r, (out, (p, g)))| {
                    let visible = rows.visible(r);
                    row_softmax_backward(&p[..visible], &g[..visible], rows.scale, &mut out[..visible]);
                });
            flex_tensor(out, probabilities.layout().shape().clone())
        });
    }
}

fn tracked_softmax(scores: Tracked, rows: Rows) -> Tracked {
    let (primitive, guard) = scores.into_parts();
    let probabilities = forward(&primitive.to_contiguous(), rows);
    drop(primitive);
    record(CausalSoftmax, [guard], probabilities.clone(), || Saved {
        probabilities,
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::activation::softmax;
    use burn::tensor::{Bool, Device, TensorData};

    /// burn's own ops: scale, hide keys beyond past + i, softmax.
    fn composed(scores: Tensor<4>, scale: f32, past: usize) -> Tensor<4> {
        let [_, _, t, keys] = scores.dims();
        let hidden = Tensor::<2, Bool>::tril_mask([t, keys], past as i64, &scores.device()).unsqueeze::<4>();
        softmax((scores * scale).mask_fill(hidden, f32::NEG_INFINITY), 3)
    }

    fn values(tensor: Tensor<4>) -> Vec<f32> {
        tensor.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn equals_masked_softmax_in_value_and_gradient_with_and_without_a_past() {
        let device = Device::flex();
        let ad = device.clone().autodiff();
        for (t, past) in [(5, 0), (3, 19)] {
            let shape = [2, 3, t, past + t];
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|i| ((i * 7919 % 97) as f32 - 48.0) * 0.21).collect();
            let upstream: Vec<f32> = (0..n).map(|i| ((i * 31 % 13) as f32 - 6.0) * 0.1).collect();
            let run = |fused: bool| {
                let scores = Tensor::<4>::from_data(TensorData::new(data.clone(), shape), &ad).require_grad();
                let p = if fused {
                    causal_softmax(scores.clone(), 0.35, past).done()
                } else {
                    composed(scores.clone(), 0.35, past)
                };
                let weights = Tensor::<4>::from_data(TensorData::new(upstream.clone(), shape), &ad);
                let grads = (p.clone() * weights).sum().backward();
                (values(p), values(scores.grad(&grads).expect("scores get a gradient")))
            };
            let (p, grad) = run(true);
            let (want_p, want_grad) = run(false);
            for (got, want) in p.iter().zip(&want_p) {
                assert!((got - want).abs() < 1e-6, "t {t} past {past}: {got} vs {want}");
                if *want == 0.0 {
                    assert_eq!(*got, 0.0, "a hidden key gets exactly 0");
                }
            }
            for (got, want) in grad.iter().zip(&want_grad) {
                assert!((got - want).abs() < 1e-6, "t {t} past {past}: gradient {got} vs {want}");
            }
            // Without autodiff (generation, evaluation) the same probabilities.
            let plain = Tensor::<4>::from_data(TensorData::new(data.clone(), shape), &device);
            assert_eq!(values(causal_softmax(plain, 0.35, past).done()), p);
        }
    }
}
