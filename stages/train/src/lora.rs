//! LoRA adapters whose initial values depend on the run's seed and the
//! weight's path only.
//!
//! burn's `Lora` draws each `A` from the backend's random generator, which
//! is one per process: an init-model or another LoRA run in the same
//! process (`run --jobs 2`, or tests side by side) seeding or drawing in
//! between changes which numbers this run gets, so the same recipe trained
//! to different adapters from one run to the next. This draws from
//! [`babelflow_stage::rng::Rng`] instead, seeded per weight.

use babelflow_stage::rng::Rng;
use burn::module::{LoraAdapter, Param, ParamGroup, Reparameterizer};
use burn::tensor::{Tensor, TensorData};

/// Attaches LoRA adapters to the 2-D weights `group` matches, as burn's
/// `Lora` does (every base weight frozen; `A ~ N(0, 1/rank)`, `B = 0`, in
/// f32; the product scaled by `alpha / rank`), with `A` from `seed` and
/// the weight's path.
pub struct SeededLora {
    pub rank: usize,
    pub alpha: f64,
    pub group: ParamGroup,
    pub seed: u64,
}

/// FNV-1a of a weight's path: a stable stream per weight.
fn path_hash(path: &str) -> u64 {
    path.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Reparameterizer for SeededLora {
    type Reparam = LoraAdapter;

    fn reparameterize<const D: usize>(
        &mut self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<LoraAdapter>) {
        // Only matrices get adapters; every other base parameter is frozen too.
        if D != 2 {
            return (param.set_require_grad(false), None);
        }
        let id = param.id;
        let device = param.base().device();
        let [d_in, d_out] = param.base().dims()[..] else {
            unreachable!("D is 2")
        };
        let base = param.set_require_grad(false);
        if !self.group.matches(&id, Some(path)) {
            return (base, None);
        }
        let std = 1.0 / self.rank as f64;
        let mut rng = Rng::new(self.seed ^ path_hash(path));
        let a = rng.normals(d_in * self.rank, std);
        let a = Tensor::<2>::from_data(TensorData::new(a, [d_in, self.rank]), &device);
        let b = Tensor::<2>::zeros([self.rank, d_out], &device);
        let adapter = LoraAdapter {
            a: Param::from_tensor(a),
            b: Param::from_tensor(b),
            scale: self.alpha / self.rank as f64,
        };
        (base, Some(adapter))
    }
}
