//! The projection `x · Wᵀ` (HF's `[out, in]` weight layout) as one matrix
//! product forward and one per input backward, written straight into
//! buffers this module allocates.
//!
//! Why: burn-flex's matmul allocates its output zero-filled as bytes, then
//! copies it once more to align it, before the product writes it a third
//! time; and burn's backward of `x · transpose(W)` goes through transposed
//! views. About a tenth of a training step of the bench's d256 model was
//! that memset and memcopy.
//!
//! A weight that does not train goes through [`project_frozen`]: held in
//! f32 or bf16, widened to f32 only for the product that reads it (forward,
//! and ∂x backward), never kept in f32; its backward saves only the weight
//! (the input is what ∂W would read, and there is no ∂W).

use std::borrow::Cow;

use burn::tensor::{DType, Tensor};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{binary, unary, Backward, Ops};
use burn_autodiff::Autodiff;
use burn_flex::{Flex, FlexTensor};
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use super::matrix::{product, View};
use super::{f32s, flex_tensor, on_flex, on_flex_all, record, Fused};

/// `x [rows, in] · weight [out, in]ᵀ → [rows, out]`.
pub fn project(x: Tensor<2>, weight: Tensor<2>) -> Fused<Tensor<2>, [Tensor<2>; 2]> {
    let ([_, inner], [_, weight_inner]) = (x.dims(), weight.dims());
    if inner != weight_inner {
        return Fused::NotApplicable([x, weight]);
    }
    on_flex_all(
        [x, weight],
        |[x, weight], guards| {
            let output = forward(&x, &weight);
            record(Projection, guards, output, || Saved { x, weight })
        },
        |[x, weight]| forward(x, weight),
    )
}

fn dims(tensor: &FlexTensor) -> [usize; 2] {
    let shape = tensor.layout().shape();
    [shape[0], shape[1]]
}

fn forward(x: &FlexTensor, weight: &FlexTensor) -> FlexTensor {
    let ([rows, inner], [out, _]) = (dims(x), dims(weight));
    let y = product(
        rows,
        out,
        inner,
        View::rows(f32s(x), inner),
        View::transposed(&widened(weight), inner),
    );
    flex_tensor(y, [rows, out])
}

#[derive(Debug)]
struct Projection;

#[derive(Debug, Clone)]
struct Saved {
    x: FlexTensor,
    weight: FlexTensor,
}

impl Backward<Flex, 2> for Projection {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let Saved { x, weight } = ops.state;
        let ([rows, inner], [out, _]) = (dims(&x), dims(&weight));
        binary::<Flex, _, _>(
            ops.parents,
            ops.node,
            grads,
            // ∂x = ∂y · W
            |grad| {
                let grad = grad.to_contiguous();
                let dx = product(
                    rows,
                    inner,
                    out,
                    View::rows(f32s(&grad), out),
                    View::rows(f32s(&weight), inner),
                );
                flex_tensor(dx, [rows, inner])
            },
            // ∂W = ∂yᵀ · x
            |grad| {
                let grad = grad.to_contiguous();
                let dw = product(
                    out,
                    inner,
                    rows,
                    View::transposed(f32s(&grad), out),
                    View::rows(f32s(&x), inner),
                );
                flex_tensor(dw, [out, inner])
            },
        );
    }
}

/// `x [rows, in] · weight [out, in]ᵀ → [rows, out]` for a weight that gets
/// no gradient, held in f32 or bf16; `x` is f32.
pub fn project_frozen(x: Tensor<2>, weight: Tensor<2>) -> Fused<Tensor<2>, [Tensor<2>; 2]> {
    let ([_, inner], [_, weight_inner]) = (x.dims(), weight.dims());
    let held = weight.dtype();
    if inner != weight_inner || x.dtype() != DType::F32 || !matches!(held, DType::F32 | DType::BF16) {
        return Fused::NotApplicable([x, weight]);
    }
    let primitive = weight
        .clone()
        .try_into_primitive::<Autodiff<Flex>>()
        .map(|t| t.into_parts().0)
        .or_else(|_| weight.clone().try_into_primitive::<Flex>());
    let Ok(primitive) = primitive else {
        return Fused::NotApplicable([x, weight]);
    };
    let frozen = primitive.to_contiguous();
    let for_plain = frozen.clone();
    on_flex(
        x,
        |x, guard| {
            let output = forward(&x, &frozen);
            record(FrozenProjection, [guard], output, || frozen)
        },
        |x| forward(x, &for_plain),
    )
    .map_input(|x| [x, weight])
}

/// The values of a contiguous f32 or bf16 weight as f32: borrowed when held
/// in f32, widened into a temporary (over the rayon pool) when in bf16.
fn widened(weight: &FlexTensor) -> Cow<'_, [f32]> {
    if let Some(values) = weight.as_slice::<f32>() {
        return Cow::Borrowed(values);
    }
    let halves = weight
        .as_slice::<half::bf16>()
        .expect("projection weights are contiguous f32 or bf16");
    let mut values = vec![0.0f32; halves.len()];
    const CHUNK: usize = 1 << 16;
    values
        .par_chunks_mut(CHUNK)
        .zip(halves.par_chunks(CHUNK))
        .for_each(|(to, from)| from.convert_to_f32_slice(to));
    Cow::Owned(values)
}

/// The projection's backward for a weight without gradient: ∂x only.
#[derive(Debug)]
struct FrozenProjection;

impl Backward<Flex, 1> for FrozenProjection {
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let weight = ops.state;
        let [out, inner] = dims(&weight);
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let grad = grad.to_contiguous();
            let rows = grad.layout().shape()[0];
            // ∂x = ∂y · W
            let dx = product(
                rows,
                inner,
                out,
                View::rows(f32s(&grad), out),
                View::rows(&widened(&weight), inner),
            );
            flex_tensor(dx, [rows, inner])
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn values(tensor: Tensor<2>) -> Vec<f32> {
        tensor.into_data().try_to_vec::<f32>().unwrap()
    }

    fn close(name: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{name}: length");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{name}: {g} vs {w}");
        }
    }

    /// Shapes on both sides of the threshold where gemm splits over threads.
    #[test]
    fn equals_matmul_with_the_transpose_in_value_and_both_gradients() {
        for (rows, inner, out) in [(5, 7, 3), (300, 200, 190)] {
            let device = Device::flex();
            let ad = device.clone().autodiff();
            let x: Vec<f32> = (0..rows * inner)
                .map(|i| ((i * 7919 % 97) as f32 - 48.0) * 0.02)
                .collect();
            let w: Vec<f32> = (0..out * inner)
                .map(|i| ((i * 131 % 53) as f32 - 26.0) * 0.03)
                .collect();
            let upstream: Vec<f32> = (0..rows * out).map(|i| ((i * 31 % 13) as f32 - 6.0) * 0.1).collect();
            let run = |fused: bool| {
                let a = Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, inner]), &ad).require_grad();
                let b = Tensor::<2>::from_data(TensorData::new(w.clone(), [out, inner]), &ad).require_grad();
                let y = if fused {
                    project(a.clone(), b.clone()).done()
                } else {
                    a.clone().matmul(b.clone().transpose())
                };
                let weights = Tensor::<2>::from_data(TensorData::new(upstream.clone(), [rows, out]), &ad);
                let grads = (y.clone() * weights).sum().backward();
                (
                    values(y),
                    values(a.grad(&grads).unwrap()),
                    values(b.grad(&grads).unwrap()),
                )
            };
            let fused = run(true);
            let composed = run(false);
            close("value", &fused.0, &composed.0);
            close("d x", &fused.1, &composed.1);
            close("d weight", &fused.2, &composed.2);

            let plain = project(
                Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, inner]), &device),
                Tensor::<2>::from_data(TensorData::new(w.clone(), [out, inner]), &device),
            );
            assert_eq!(values(plain.done()), fused.0);
        }
    }

    /// A frozen weight (no gradient asked) still passes the gradient to `x`,
    /// and a transposed (non-contiguous) input is read correctly.
    #[test]
    fn frozen_weight_and_strided_input() {
        let ad = Device::flex().autodiff();
        let x: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 3.0).collect();
        let w: Vec<f32> = (0..8).map(|i| 1.0 - i as f32 * 0.25).collect();
        let xt = Tensor::<2>::from_data(TensorData::new(x, [4, 3]), &ad).require_grad();
        let weight = Tensor::<2>::from_data(TensorData::new(w, [2, 4]), &ad);
        // x = xtᵀ is [3, 4], a strided view.
        let y = project(xt.clone().transpose(), weight.clone()).done();
        let want = xt.clone().transpose().matmul(weight.clone().transpose());
        close("value", &values(y.clone()), &values(want));
        let grads = y.sum().backward();
        assert!(weight.grad(&grads).is_none());
        // ∂(Σ y)/∂xt[i, r] = Σ_o W[o, i]
        let want_dx: Vec<f32> = (0..12)
            .map(|j| {
                let i = j / 3;
                (1.0 - i as f32 * 0.25) + (1.0 - (4 + i) as f32 * 0.25)
            })
            .collect();
        close("d x", &values(xt.grad(&grads).unwrap()), &want_dx);
    }

    /// A frozen weight held in bf16 gives what the same values in f32 give,
    /// value and ∂x (they are the same numbers, widened exactly), with and
    /// without autodiff.
    #[test]
    fn a_frozen_bf16_weight_projects_as_its_f32_values() {
        let (rows, inner, out) = (6, 40, 9);
        let ad = Device::flex().autodiff();
        let x: Vec<f32> = (0..rows * inner)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.05)
            .collect();
        let w: Vec<f32> = (0..out * inner)
            .map(|i| half::bf16::from_f32(((i * 53 % 29) as f32 - 14.0) * 0.07).to_f32())
            .collect();
        let w16 = Tensor::<2>::from_data(TensorData::new(w.clone(), [out, inner]), &ad).cast(DType::BF16);
        let w32 = Tensor::<2>::from_data(TensorData::new(w.clone(), [out, inner]), &ad);
        let run = |weight: Tensor<2>, frozen: bool| {
            let a = Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, inner]), &ad).require_grad();
            let y = if frozen {
                project_frozen(a.clone(), weight).done()
            } else {
                project(a.clone(), weight).done()
            };
            let grads = (y.clone() * y.clone()).sum().backward();
            (values(y), values(a.grad(&grads).unwrap()))
        };
        let (y16, dx16) = run(w16, true);
        let (y32, dx32) = run(w32, false);
        close("value", &y16, &y32);
        close("d x", &dx16, &dx32);

        let plain = project_frozen(
            Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, inner]), &Device::flex()),
            Tensor::<2>::from_data(TensorData::new(w, [out, inner]), &Device::flex()).cast(DType::BF16),
        );
        assert_eq!(values(plain.done()), y16);
    }
}
