//! Rotary position embedding applied per head in one pass, forward and
//! backward, positions spread over the rayon pool.
//!
//! Why: burn composes it from two slices, a negation, a concatenation, two
//! products and a sum, each a single-threaded pass with its own buffer, for
//! the queries and the keys of every layer.

use std::sync::Arc;

use burn::tensor::Tensor;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{unary, Backward, Ops};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::row_kernels::{rope_head, rope_head_backward};
use super::{f32s, flex_tensor, on_flex, record, Fused};

/// Positions per rayon task.
const POSITIONS: usize = 32;

/// The cos and sin tables, `[positions, head_dim]` row-major.
#[derive(Debug, Clone)]
pub struct RopeTables {
    pub cos: Arc<[f32]>,
    pub sin: Arc<[f32]>,
    pub head_dim: usize,
}

impl RopeTables {
    fn positions(&self) -> usize {
        self.cos.len() / self.head_dim
    }
}

/// Rotates `x [batch, t, heads, head_dim]` for positions `start..start + t`.
pub fn rotate(x: Tensor<4>, tables: &RopeTables, start: usize) -> Fused<Tensor<4>, Tensor<4>> {
    let [_, t, _, head_dim] = x.dims();
    if head_dim != tables.head_dim || head_dim % 2 != 0 || start + t > tables.positions() {
        return Fused::NotApplicable(x);
    }
    let at = Placement {
        tables: tables.clone(),
        start,
        t,
    };
    on_flex(
        x,
        |x, guard| {
            let output = apply(&x, &at, Direction::Forward);
            record(Rotate, [guard], output, || at.clone())
        },
        |plain| apply(plain, &at, Direction::Forward),
    )
}

/// Which positions of which tables a tensor's rows take.
#[derive(Debug, Clone)]
struct Placement {
    tables: RopeTables,
    start: usize,
    t: usize,
}

#[derive(Clone, Copy)]
enum Direction {
    Forward,
    Backward,
}

/// The rotation (or its transpose, for the gradient) of every head of a
/// contiguous `[batch, t, heads, head_dim]` tensor.
fn apply(input: &FlexTensor, at: &Placement, direction: Direction) -> FlexTensor {
    let values = f32s(input);
    let shape = input.layout().shape().clone();
    let hd = at.tables.head_dim;
    let row = shape[2] * hd;
    let mut out = vec![0.0f32; values.len()];
    out.par_chunks_mut(POSITIONS * row)
        .zip(values.par_chunks(POSITIONS * row))
        .enumerate()
        .for_each(|(task, (out, values))| {
            for (i, (out, values)) in out.chunks_mut(row).zip(values.chunks(row)).enumerate() {
                let position = at.start + (task * POSITIONS + i) % at.t;
                let cos = &at.tables.cos[position * hd..][..hd];
                let sin = &at.tables.sin[position * hd..][..hd];
                for (out, x) in out.chunks_mut(hd).zip(values.chunks(hd)) {
                    match direction {
                        Direction::Forward => rope_head(x, cos, sin, out),
                        Direction::Backward => rope_head_backward(x, cos, sin, out),
                    }
                }
            }
        });
    flex_tensor(out, shape)
}

#[derive(Debug)]
struct Rotate;

impl Backward<Flex, 1> for Rotate {
    type State = Placement;

    fn backward(self, ops: Ops<Placement, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let at = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            apply(&grad.to_contiguous(), &at, Direction::Backward)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LlamaConfig;
    use crate::llama::Rope;
    use burn::tensor::{Device, TensorData};

    fn values(tensor: Tensor<4>) -> Vec<f32> {
        tensor.into_data().try_to_vec::<f32>().unwrap()
    }

    /// Value and gradient equal burn's composed rotation, from position 0
    /// and from a later start (a KV cache's next positions).
    #[test]
    fn equals_the_composed_rotation_in_value_and_gradient() {
        let device = Device::flex();
        let ad = device.clone().autodiff();
        let config = LlamaConfig::tiny(50, 32, 1, 4, 4);
        let rope = Rope::new(&config, 80, &ad).unwrap();
        let shape = [2, 45, 4, 8];
        let n: usize = shape.iter().product();
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919 % 97) as f32 - 48.0) * 0.05).collect();
        let upstream: Vec<f32> = (0..n).map(|i| ((i * 31 % 13) as f32 - 6.0) * 0.1).collect();
        for start in [0, 30] {
            let run = |fused: bool| {
                let tx = Tensor::<4>::from_data(TensorData::new(x.clone(), shape), &ad).require_grad();
                let y = if fused {
                    rotate(tx.clone(), rope.tables(), start).done()
                } else {
                    rope.composed(tx.clone(), start)
                };
                let weights = Tensor::<4>::from_data(TensorData::new(upstream.clone(), shape), &ad);
                let grads = (y.clone() * weights).sum().backward();
                (values(y), values(tx.grad(&grads).unwrap()))
            };
            let (fused, composed) = (run(true), run(false));
            for (name, got, want) in [("value", &fused.0, &composed.0), ("d x", &fused.1, &composed.1)] {
                for (g, w) in got.iter().zip(want) {
                    assert!(
                        (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                        "{name} from {start}: {g} vs {w}"
                    );
                }
            }
            let plain = Tensor::<4>::from_data(TensorData::new(x.clone(), shape), &device);
            assert_eq!(values(rotate(plain, rope.tables(), start).done()), fused.0);
        }
    }
}
