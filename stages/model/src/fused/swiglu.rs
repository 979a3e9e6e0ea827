//! SwiGLU's gate `silu(gate) ⊙ up` in one pass, and each input's gradient
//! in one more, in chunks over the rayon pool (burn composes it from a
//! sigmoid, two products and, in the backward, a recomputed sigmoid).

use burn::tensor::Tensor;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::row_kernels::{swiglu as swiglu_kernel, swiglu_backward_in_place};
use super::{f32s, flex_tensor, into_owned, on_flex_all, parent_ids, record, register_all, Fused};

/// Elements per rayon task: large enough to amortise the task, small
/// enough to split a layer's activations over the threads.
const CHUNK: usize = 1 << 14;

/// `silu(gate) ⊙ up` for two tensors of the same shape.
pub fn swiglu(gate: Tensor<3>, up: Tensor<3>) -> Fused<Tensor<3>, [Tensor<3>; 2]> {
    if gate.dims() != up.dims() {
        return Fused::NotApplicable([gate, up]);
    }
    on_flex_all(
        [gate, up],
        |[gate, up], guards| {
            let output = forward(&gate, &up);
            record(SwiGlu, guards, output, || Saved { gate, up })
        },
        |[gate, up]| forward(gate, up),
    )
}

fn forward(gate: &FlexTensor, up: &FlexTensor) -> FlexTensor {
    let mut out = vec![0.0f32; f32s(gate).len()];
    out.par_chunks_mut(CHUNK)
        .zip(f32s(gate).par_chunks(CHUNK).zip(f32s(up).par_chunks(CHUNK)))
        .for_each(|(out, (a, b))| swiglu_kernel(a, b, out));
    flex_tensor(out, gate.layout().shape().clone())
}

#[derive(Debug)]
struct SwiGlu;

#[derive(Debug, Clone)]
struct Saved {
    gate: FlexTensor,
    up: FlexTensor,
}

impl Backward<Flex, 2> for SwiGlu {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let parents = parent_ids(&ops);
        // Nothing reads gate and up after this: their buffers become the gradients.
        let (mut gate, mut up) = (into_owned(ops.state.gate), into_owned(ops.state.up));
        {
            let a = gate.try_storage_mut::<f32>().expect("owned");
            let b = up.try_storage_mut::<f32>().expect("owned");
            a.par_chunks_mut(CHUNK)
                .zip(b.par_chunks_mut(CHUNK))
                .zip(f32s(&grad).par_chunks(CHUNK))
                .for_each(|((a, b), g)| swiglu_backward_in_place(a, b, g));
        }
        register_all(parents, grads, [gate, up]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::activation::silu;
    use burn::tensor::{Device, TensorData};

    fn values(tensor: Tensor<3>) -> Vec<f32> {
        tensor.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn equals_silu_times_up_in_value_and_both_gradients() {
        let device = Device::flex();
        let ad = device.clone().autodiff();
        let shape = [2, 3, 41];
        let n: usize = shape.iter().product();
        let gate: Vec<f32> = (0..n).map(|i| ((i * 7919 % 97) as f32 - 48.0) * 0.19).collect();
        let up: Vec<f32> = (0..n).map(|i| ((i * 131 % 53) as f32 - 26.0) * 0.07).collect();
        let upstream: Vec<f32> = (0..n).map(|i| ((i * 31 % 13) as f32 - 6.0) * 0.1).collect();
        // `Composed`: burn's ops. `Owned`: the op holds the only reference to
        // its inputs (as in the model) and writes the gradients over them.
        // `Shared`: the caller keeps the inputs, which must stay as they were.
        enum Path {
            Composed,
            Owned,
            Shared,
        }
        let run = |path: Path| {
            let a = Tensor::<3>::from_data(TensorData::new(gate.clone(), shape), &ad).require_grad();
            let b = Tensor::<3>::from_data(TensorData::new(up.clone(), shape), &ad).require_grad();
            let (x, y) = (a.clone() * 1.0, b.clone() * 1.0);
            let mut kept = None;
            let out = match path {
                Path::Composed => silu(x) * y,
                Path::Owned => swiglu(x, y).done(),
                Path::Shared => {
                    kept = Some((x.clone(), y.clone()));
                    swiglu(x, y).done()
                }
            };
            let weights = Tensor::<3>::from_data(TensorData::new(upstream.clone(), shape), &ad);
            let grads = (out.clone() * weights).sum().backward();
            if let Some((x, y)) = kept {
                assert_eq!(values(x), gate, "the caller's gate is untouched");
                assert_eq!(values(y), up, "the caller's up is untouched");
            }
            (
                values(out),
                values(a.grad(&grads).unwrap()),
                values(b.grad(&grads).unwrap()),
            )
        };
        let composed = run(Path::Composed);
        let fused = run(Path::Owned);
        assert_eq!(run(Path::Shared), fused);
        for (name, got, want) in [
            ("value", &fused.0, &composed.0),
            ("d gate", &fused.1, &composed.1),
            ("d up", &fused.2, &composed.2),
        ] {
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() <= 2e-6 * w.abs().max(1.0), "{name}: {g} vs {w}");
            }
        }
        let plain = swiglu(
            Tensor::<3>::from_data(TensorData::new(gate.clone(), shape), &device),
            Tensor::<3>::from_data(TensorData::new(up.clone(), shape), &device),
        );
        assert_eq!(values(plain.done()), fused.0);
    }
}
