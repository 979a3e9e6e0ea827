//! What keeps the ranks of a data-parallel run one model: the gradients of
//! each optimizer step summed across ranks (each rank's loss already
//! carries its share of the global batch's normalisation, so the sum is the
//! gradient of the whole batch), and a cheap checksum of the weights that
//! says when replicas drifted apart.
//!
//! Host-staged and streamed: gradients are read back as `f32` in the
//! module's order into a bucket of about [`BUCKET`] values; a full bucket is
//! all-reduced and its sums put back on their devices before the next
//! gradients are read, so the host holds one bucket (or one weight larger
//! than a bucket) at a time, never a copy of every gradient. Every rank
//! visits the parameters in the same order and fills buckets by their
//! shapes alone, so the buffers line up.

use std::time::Instant;

use babelflow_model::Llama;
use babelflow_stage::{Collective, StageError};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Device, Tensor, TensorData};

/// Values per all-reduce (16 MB of `f32`): large enough to amortise MPI's
/// latency, small enough that staging adds little to a large model's memory.
pub const BUCKET: usize = 4 << 20;

/// Puts a gradient's sums back where it came from (typed by the weight's
/// rank, which the bucket has forgotten).
type Put = Box<dyn FnOnce(&mut GradientsParams, Vec<f32>)>;

/// One weight's gradient waiting in the bucket.
struct Waiting {
    len: usize,
    /// This rank had a gradient for it (a rank whose share had no counted
    /// position, an SFT slice of prompts only, has none and sends zeros).
    had: bool,
    put: Put,
}

struct Streamed<'a> {
    world: &'a dyn Collective,
    /// Values per all-reduce ([`BUCKET`]; smaller in tests).
    capacity: usize,
    grads: &'a mut GradientsParams,
    /// Where a gradient that only other ranks had goes (the model's device).
    fallback: &'a Device,
    bucket: Vec<f32>,
    waiting: Vec<Waiting>,
    seconds: f64,
}

impl Streamed<'_> {
    /// Sums the bucket across ranks, with one presence flag per weight
    /// after the values, and puts back the weights some rank had: one that
    /// none had stays absent (the optimizer then leaves it alone, as with
    /// one process).
    fn flush(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        let values = self.bucket.len();
        self.bucket.extend(self.waiting.iter().map(|w| f32::from(w.had)));
        let started = Instant::now();
        for chunk in self.bucket.chunks_mut(self.capacity) {
            self.world.sum_f32(chunk);
        }
        self.seconds += started.elapsed().as_secs_f64();
        let flags = self.bucket.split_off(values);
        let mut sums = self.bucket.as_slice();
        for (waiting, had) in self.waiting.drain(..).zip(flags) {
            let (mine, rest) = sums.split_at(waiting.len);
            sums = rest;
            if had > 0.0 {
                (waiting.put)(self.grads, mine.to_vec());
            }
        }
        self.bucket.clear();
    }
}

impl ModuleVisitor for Streamed<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !param.is_require_grad() {
            return;
        }
        let shape = param.shape().to_vec();
        let len: usize = shape.iter().product();
        if !self.bucket.is_empty() && self.bucket.len() + len > self.capacity {
            self.flush();
        }
        let (device, dtype, had) = match self.grads.remove::<D>(param.id) {
            Some(g) => {
                let (device, dtype) = (g.device(), g.dtype());
                let data = g.into_data().convert::<f32>();
                self.bucket
                    .extend_from_slice(data.as_slice::<f32>().expect("converted to f32 above"));
                (device, dtype, true)
            }
            None => {
                self.bucket.resize(self.bucket.len() + len, 0.0);
                (self.fallback.clone(), DType::F32, false)
            }
        };
        let id = param.id;
        let put: Put = Box::new(move |grads, sums| {
            let data = TensorData::new(sums, shape).convert_dtype(dtype);
            grads.register::<D>(id, Tensor::from_data(data, &device));
        });
        self.waiting.push(Waiting { len, had, put });
        if self.bucket.len() >= self.capacity {
            self.flush();
        }
    }
}

/// Sums `grads` over `world` in place of each rank's own; returns them and
/// the seconds spent in the all-reduce itself. `device` holds gradients a
/// rank did not have itself (the model's device).
pub fn sum_gradients(
    world: &dyn Collective,
    model: &Llama,
    grads: GradientsParams,
    device: &Device,
) -> (GradientsParams, f64) {
    sum_in_buckets(world, model, grads, device, BUCKET)
}

fn sum_in_buckets(
    world: &dyn Collective,
    model: &Llama,
    mut grads: GradientsParams,
    device: &Device,
    capacity: usize,
) -> (GradientsParams, f64) {
    let mut streamed = Streamed {
        world,
        capacity,
        grads: &mut grads,
        fallback: device,
        bucket: Vec::new(),
        waiting: Vec::new(),
        seconds: 0.0,
    };
    model.visit(&mut streamed);
    streamed.flush();
    let seconds = streamed.seconds;
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use babelflow_model::LlamaConfig;

    use super::*;

    /// A second rank with the same gradients as this one, which records
    /// the length of every all-reduce.
    #[derive(Default)]
    struct Twin {
        calls: Mutex<Vec<usize>>,
    }

    impl Collective for Twin {
        fn rank(&self) -> usize {
            0
        }
        fn world_size(&self) -> usize {
            2
        }
        fn local_rank(&self) -> usize {
            0
        }
        fn sum_f32(&self, values: &mut [f32]) {
            self.calls.lock().unwrap().push(values.len());
            values.iter_mut().for_each(|v| *v *= 2.0);
        }
        fn sum_f64(&self, values: &mut [f64]) {
            values.iter_mut().for_each(|v| *v *= 2.0);
        }
        fn max_f64(&self, _: &mut [f64]) {}
        fn barrier(&self) {}
        fn describe(&self) -> String {
            "twin".into()
        }
    }

    /// Every trainable weight's gradient, in the module's order (None where
    /// there is none).
    fn flat(model: &Llama, grads: &GradientsParams) -> Vec<Option<Vec<f32>>> {
        struct Read<'a>(&'a GradientsParams, Vec<Option<Vec<f32>>>);
        impl ModuleVisitor for Read<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if param.is_require_grad() {
                    let g = self.0.get::<D>(param.id);
                    self.1
                        .push(g.map(|g| g.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()));
                }
            }
        }
        let mut r = Read(grads, Vec::new());
        model.visit(&mut r);
        r.1
    }

    #[test]
    fn gradients_stream_through_small_buckets_and_come_back_summed_in_place() {
        let device = Device::flex();
        let ad = device.clone().autodiff();
        // Vocabulary 64 × hidden 16: the embedding (1,024 values) is larger
        // than the bucket, the norms (16) fill it several to a call.
        let config = LlamaConfig::tiny(64, 16, 2, 2, 2);
        let model = Llama::init(&config, 0, &ad);
        let rope = babelflow_model::Rope::new(&config, 8, &ad).unwrap();
        let ids: Vec<i64> = (0..9).map(|i| (i * 7) % 64).collect();
        let x = Tensor::<2, burn::tensor::Int>::from_data(TensorData::new(ids[..8].to_vec(), [1, 8]), &ad);
        let y = Tensor::<2, burn::tensor::Int>::from_data(TensorData::new(ids[1..].to_vec(), [1, 8]), &ad);
        let loss = babelflow_model::loss::cross_entropy(model.forward(x, &rope, None), y, None);
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        // A weight this rank had no gradient for stays without one.
        let skipped = model.norm.weight.id;
        grads.remove::<1>(skipped);
        let own = flat(&model, &grads);

        let twin = Twin::default();
        let (summed, _) = sum_in_buckets(&twin, &model, grads, &device, 300);
        let summed = flat(&model, &summed);
        assert_eq!(own.len(), summed.len());
        for (i, (own, summed)) in own.iter().zip(&summed).enumerate() {
            match (own, summed) {
                (None, None) => {}
                (Some(own), Some(summed)) => {
                    let doubled: Vec<f32> = own.iter().map(|v| v * 2.0).collect();
                    assert_eq!(summed, &doubled, "weight {i}");
                }
                _ => panic!(
                    "weight {i}: present {} before, {} after",
                    own.is_some(),
                    summed.is_some()
                ),
            }
        }
        assert_eq!(own.iter().filter(|g| g.is_none()).count(), 1, "the final norm had none");
        let calls = twin.calls.lock().unwrap();
        assert!(calls.len() > 3 && calls.iter().all(|&n| n <= 300), "{calls:?}");
        let total: usize = calls.iter().sum();
        // The weight without a gradient sends zeros of its size.
        let values: usize = own.iter().flatten().map(Vec::len).sum::<usize>() + config.hidden_size;
        assert_eq!(total, values + own.len(), "every value once, and one flag per weight");
    }
}
