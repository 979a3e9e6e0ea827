//! RMSNorm `x / sqrt(mean(x²) + eps) ⊙ w` over the last dimension: one
//! pass per row forward, one backward, rows spread over the rayon pool.
//!
//! Why: burn composes it from six single-threaded passes forward and about
//! twice as many backward; a d256 model runs nine of them per step.

use burn::tensor::Tensor;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::row_kernels::{rms_norm_row, rms_norm_row_backward};
use super::{f32s, flex_tensor, on_flex_all, parent_ids, record, register_all, Fused};

/// Rows per rayon task; the weight gradient is summed per task, then over
/// the tasks in order, so it does not depend on the thread count.
const ROWS: usize = 64;

/// `x [b, t, d]` normalised per row and scaled by `weight [1, 1, d]`.
pub fn rms_norm(x: Tensor<3>, weight: Tensor<3>, eps: f32) -> Fused<Tensor<3>, [Tensor<3>; 2]> {
    let [_, _, d] = x.dims();
    if weight.dims() != [1, 1, d] {
        return Fused::NotApplicable([x, weight]);
    }
    on_flex_all(
        [x, weight],
        |[x, weight], guards| {
            let (output, inverses) = forward(&x, &weight, eps);
            record(RmsNorm, guards, output, || Saved { x, weight, inverses })
        },
        |[x, weight]| forward(x, weight, eps).0,
    )
}

/// The output and each row's `1 / rms`.
fn forward(x: &FlexTensor, weight: &FlexTensor, eps: f32) -> (FlexTensor, Vec<f32>) {
    let (values, w) = (f32s(x), f32s(weight));
    let d = w.len();
    let mut out = vec![0.0f32; values.len()];
    let inverses: Vec<f32> = out
        .par_chunks_mut(d)
        .zip(values.par_chunks(d))
        .map(|(out, row)| rms_norm_row(row, w, eps, out))
        .collect();
    (flex_tensor(out, x.layout().shape().clone()), inverses)
}

#[derive(Debug)]
struct RmsNorm;

#[derive(Debug, Clone)]
struct Saved {
    x: FlexTensor,
    weight: FlexTensor,
    inverses: Vec<f32>,
}

impl Backward<Flex, 2> for RmsNorm {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let Saved { x, weight, inverses } = &ops.state;
        let (values, w) = (f32s(x), f32s(weight));
        let d = w.len();
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let g = f32s(&grad);
        let mut dx = vec![0.0f32; values.len()];
        let partial_dw: Vec<Vec<f32>> = dx
            .par_chunks_mut(ROWS * d)
            .zip(values.par_chunks(ROWS * d).zip(g.par_chunks(ROWS * d)))
            .zip(inverses.par_chunks(ROWS))
            .map(|((dx, (x, g)), inverses)| {
                let mut dw = vec![0.0f32; d];
                for (((dx, x), g), &inv) in dx.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)).zip(inverses) {
                    rms_norm_row_backward(x, w, g, inv, dx, &mut dw);
                }
                dw
            })
            .collect();
        let mut dw = vec![0.0f32; d];
        for partial in &partial_dw {
            dw.iter_mut().zip(partial).for_each(|(total, p)| *total += p);
        }
        let (x_shape, w_shape) = (x.layout().shape().clone(), weight.layout().shape().clone());
        register_all(
            parent_ids(&ops),
            grads,
            [flex_tensor(dx, x_shape), flex_tensor(dw, w_shape)],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn values(tensor: Tensor<3>) -> Vec<f32> {
        tensor.into_data().try_to_vec::<f32>().unwrap()
    }

    /// Value and both gradients equal burn's composed ops, over more rows
    /// than one task takes (so the weight gradient sums partials).
    #[test]
    fn equals_the_composed_norm_in_value_and_both_gradients() {
        let device = Device::flex();
        let ad = device.clone().autodiff();
        let (shape, d) = ([3, 50, 37], 37);
        let n: usize = shape.iter().product();
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919 % 97) as f32 - 48.0) * 0.05).collect();
        let w: Vec<f32> = (0..d).map(|i| 0.5 + i as f32 * 0.03).collect();
        let upstream: Vec<f32> = (0..n).map(|i| ((i * 31 % 13) as f32 - 6.0) * 0.1).collect();
        let eps = 1e-5;
        let run = |fused: bool| {
            let tx = Tensor::<3>::from_data(TensorData::new(x.clone(), shape), &ad).require_grad();
            let tw = Tensor::<1>::from_data(TensorData::new(w.clone(), [d]), &ad).require_grad();
            let y = if fused {
                rms_norm(tx.clone(), tw.clone().unsqueeze(), eps).done()
            } else {
                let rms = (tx.clone().square().mean_dim(2) + eps as f64).sqrt();
                tx.clone() / rms * tw.clone().unsqueeze::<3>()
            };
            let weights = Tensor::<3>::from_data(TensorData::new(upstream.clone(), shape), &ad);
            let grads = (y.clone() * weights).sum().backward();
            let dw = tw.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
            (values(y), values(tx.grad(&grads).unwrap()), dw)
        };
        let fused = run(true);
        let composed = run(false);
        for (name, got, want) in [
            ("value", &fused.0, &composed.0),
            ("d x", &fused.1, &composed.1),
            ("d weight", &fused.2, &composed.2),
        ] {
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() <= 2e-5 * w.abs().max(1.0), "{name}: {g} vs {w}");
            }
        }
        let plain = rms_norm(
            Tensor::<3>::from_data(TensorData::new(x.clone(), shape), &device),
            Tensor::<1>::from_data(TensorData::new(w.clone(), [d]), &device).unsqueeze(),
            eps,
        );
        assert_eq!(values(plain.done()), fused.0);
    }
}
