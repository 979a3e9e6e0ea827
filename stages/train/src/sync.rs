//! What keeps the ranks of a data-parallel run one model: the gradients of
//! each optimizer step summed across ranks (each rank's loss already
//! carries its share of the global batch's normalisation, so the sum is the
//! gradient of the whole batch), and a cheap checksum of the weights that
//! says when replicas drifted apart.
//!
//! Host-staged: each gradient is read back as `f32`, appended to buckets of
//! [`BUCKET`] values that are all-reduced one after another, and put back
//! on its device. Every rank visits the parameters in the module's order,
//! so buffers line up.

use std::time::Instant;

use babelflow_model::Llama;
use babelflow_stage::{Collective, StageError};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Device, Tensor, TensorData};

/// Values per all-reduce (16 MB of `f32`): large enough to amortise MPI's
/// latency, small enough that staging never doubles a large model's memory.
pub const BUCKET: usize = 4 << 20;

struct Slot {
    id: ParamId,
    shape: Vec<usize>,
    /// Where and as what the gradient lived (`None`: this rank had none).
    origin: Option<(Device, DType)>,
}

/// Sums `grads` over `world` in place of each rank's own; returns them and
/// the seconds spent in the all-reduce itself. `device` holds gradients a
/// rank did not have itself (the model's device).
pub fn sum_gradients(
    world: &dyn Collective,
    model: &Llama,
    mut grads: GradientsParams,
    device: &Device,
) -> (GradientsParams, f64) {
    struct Take<'a> {
        grads: &'a mut GradientsParams,
        slots: Vec<Slot>,
        values: Vec<f32>,
    }
    impl ModuleVisitor for Take<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if !param.is_require_grad() {
                return;
            }
            let shape = param.shape().to_vec();
            let n: usize = shape.iter().product();
            let origin = match self.grads.remove::<D>(param.id) {
                Some(g) => {
                    let origin = (g.device(), g.dtype());
                    let data = g.into_data().convert::<f32>();
                    self.values
                        .extend_from_slice(data.as_slice::<f32>().expect("converted to f32 above"));
                    Some(origin)
                }
                None => {
                    // A rank whose share had no counted position (an SFT
                    // slice of prompts only) contributes zeros.
                    self.values.resize(self.values.len() + n, 0.0);
                    None
                }
            };
            self.slots.push(Slot {
                id: param.id,
                shape,
                origin,
            });
        }
    }
    let mut take = Take {
        grads: &mut grads,
        slots: Vec::new(),
        values: Vec::new(),
    };
    model.visit(&mut take);
    let Take { slots, mut values, .. } = take;
    // Which ranks had each gradient: one that none had stays absent (the
    // optimizer then leaves that weight alone, as with one process).
    let mut had: Vec<f32> = slots.iter().map(|s| f32::from(s.origin.is_some())).collect();
    let started = Instant::now();
    world.sum_f32(&mut had);
    for bucket in values.chunks_mut(BUCKET) {
        world.sum_f32(bucket);
    }
    let seconds = started.elapsed().as_secs_f64();

    struct Put<'a> {
        grads: &'a mut GradientsParams,
        slots: std::iter::Peekable<std::slice::Iter<'a, Slot>>,
        had: std::slice::Iter<'a, f32>,
        values: &'a [f32],
        fallback: &'a Device,
    }
    impl ModuleVisitor for Put<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.slots.peek().is_none_or(|s| s.id != param.id) {
                return;
            }
            let slot = self.slots.next().expect("peeked");
            let n: usize = slot.shape.iter().product();
            let (mine, rest) = self.values.split_at(n);
            self.values = rest;
            if *self.had.next().expect("one flag per slot") == 0.0 {
                return;
            }
            let (device, dtype) = slot.origin.clone().unwrap_or((self.fallback.clone(), DType::F32));
            let data = TensorData::new(mine.to_vec(), slot.shape.clone()).convert_dtype(dtype);
            self.grads.register::<D>(slot.id, Tensor::from_data(data, &device));
        }
    }
    let fallback = device.clone();
    let mut put = Put {
        grads: &mut grads,
        slots: slots.iter().peekable(),
        had: had.iter(),
        values: &values,
        fallback: &fallback,
    };
    model.visit(&mut put);
    (grads, seconds)
}

/// Sum and sum of squares of every weight, in `f64` (one pass).
fn checksum(model: &Llama) -> [f64; 2] {
    struct Sums([f64; 2]);
    impl ModuleVisitor for Sums {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let data = param.val().into_data().convert::<f64>();
            for &x in data.as_slice::<f64>().expect("converted to f64 above") {
                self.0[0] += x;
                self.0[1] += x * x;
            }
        }
    }
    let mut s = Sums([0.0; 2]);
    model.visit(&mut s);
    s.0
}

/// Fails on every rank when the replicas' weights are not the same bits:
/// the ranks stepped with identical gradients, so any difference is a bug
/// or a broken rank, and training on would average different models.
pub fn check_replicas(world: &dyn Collective, model: &Llama, step: usize) -> Result<(), StageError> {
    if world.world_size() == 1 {
        return Ok(());
    }
    let [sum, squares] = checksum(model);
    let mut extremes = [sum, -sum, squares, -squares];
    world.max_f64(&mut extremes);
    let same = extremes[0] == -extremes[1] && extremes[2] == -extremes[3];
    if same {
        Ok(())
    } else {
        Err(StageError::failed(format!(
            "the ranks' models diverged at step {step}: weight sums range over [{}, {}] (this rank: {sum}); replicas must stay identical — check that every rank runs the same babelflow build and backend",
            -extremes[1], extremes[0]
        )))
    }
}
