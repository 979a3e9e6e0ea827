//! burn's AdamW with each parameter's update done in one pass over the
//! rayon pool on `flex`, in place.
//!
//! Why: burn composes the update from about fifteen tensor ops, each a
//! single-threaded pass that allocates its output; for the bench's d256
//! model that was a tenth of a training step. The arithmetic here is
//! burn's, operation for operation, so the weights and moments are
//! bit-identical to [`burn::optim::AdamW`]'s, and the state is burn's own
//! [`AdamWState`]: checkpoints read and write the same records. Other
//! backends, other dtypes and AMSGrad states take burn's composed update.
//!
//! Gradient clipping (per parameter, as burn's `GradientClipping::Norm`) is
//! done here rather than by burn's optimizer adaptor: burn's norm of a
//! large tensor varies in its last bits with thread timing (see
//! [`super::norm`]), ours does not, and the scaling joins the update's pass.

use burn::grad_clipping::GradientClipping;
use burn::optim::{AdamWConfig, AdamWState, AdaptiveMomentumState, ModuleOptimizer, Optimizer};
use burn::tensor::{DType, Device, Tensor, TensorData};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::into_owned;
use super::norm::sum_of_squares;

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// AdamW (decoupled weight decay) with burn's defaults replaced by the
/// caller's; `init` gives the [`ModuleOptimizer`] a training loop steps.
#[derive(Clone)]
pub struct AdamW {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
    /// Each parameter's gradient is scaled to at most this L2 norm.
    clip_norm: Option<f32>,
    composed: burn::optim::AdamW,
}

impl AdamW {
    pub fn new(beta_1: f32, beta_2: f32, epsilon: f32, weight_decay: f32) -> Self {
        let composed = AdamWConfig::new()
            .with_beta_1(beta_1)
            .with_beta_2(beta_2)
            .with_epsilon(epsilon)
            .with_weight_decay(weight_decay)
            .build();
        AdamW {
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
            clip_norm: None,
            composed,
        }
    }

    /// The optimizer over a whole module, clipping gradients to
    /// `clip_norm` (L2, per parameter, as burn's `GradientClipping::Norm`) when given.
    pub fn init(mut self, clip_norm: Option<f32>) -> ModuleOptimizer {
        self.clip_norm = clip_norm;
        ModuleOptimizer::from(self)
    }

    /// What `grad` is multiplied by: `clip / ‖grad‖` where that is under
    /// 1, as burn computes it (NaN stays NaN, so divergence still shows).
    fn clip_scale(&self, squared_norm: impl FnOnce() -> f64) -> f32 {
        let Some(clip) = self.clip_norm else { return 1.0 };
        let norm = squared_norm().sqrt() as f32;
        let scale = clip / (norm + f32::MIN_POSITIVE);
        if scale > 1.0 {
            1.0
        } else {
            scale
        }
    }
}

impl Optimizer for AdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: f64,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<AdamWState<D>>,
    ) -> (Tensor<D>, Option<AdamWState<D>>) {
        if fuses(&tensor, &grad, state.as_ref()) {
            let (tensor, state) = self.fused_step(lr, tensor, grad, state);
            (tensor, Some(state))
        } else {
            let grad = match self.clip_norm {
                Some(clip) => GradientClipping::Norm(clip).clip_gradient(grad),
                None => grad,
            };
            self.composed.step(lr, tensor, grad, state)
        }
    }

    fn to_device<const D: usize>(state: AdamWState<D>, device: &Device) -> AdamWState<D> {
        burn::optim::AdamW::to_device(state, device)
    }
}

impl AdamW {
    fn fused_step<const D: usize>(
        &self,
        lr: f64,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<AdamWState<D>>,
    ) -> (Tensor<D>, AdamWState<D>) {
        let flex = |t: Tensor<D>| t.try_into_primitive::<Flex>().expect("checked by `fuses`");
        let shape = tensor.shape();
        let (mut theta, grad) = (into_owned(flex(tensor)), flex(grad).to_contiguous());
        let g = grad.as_slice::<f32>().expect("contiguous");
        let grad_scale = self.clip_scale(|| sum_of_squares(g));
        let (time, mut moment_1, mut moment_2) = match state {
            Some(s) => (
                s.momentum.time + 1,
                into_owned(flex(s.momentum.moment_1)),
                into_owned(flex(s.momentum.moment_2)),
            ),
            None => {
                let zeros = || FlexTensor::from_data(TensorData::zeros::<f32, _>(shape.clone()));
                (1, zeros(), zeros())
            }
        };
        let update = Update {
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            factor_1: 1.0 - self.beta_1,
            factor_2: 1.0 - self.beta_2,
            correction_1: 1.0 - self.beta_1.powi(time as i32),
            correction_2: 1.0 - self.beta_2.powi(time as i32),
            epsilon: self.epsilon,
            // burn takes these scalars in f64 and applies them in f32.
            keep: (1.0 - lr * self.weight_decay as f64) as f32,
            lr: lr as f32,
            first: time == 1,
            grad_scale,
        };
        {
            let theta = theta.try_storage_mut::<f32>().expect("owned");
            let m = moment_1.try_storage_mut::<f32>().expect("owned");
            let v = moment_2.try_storage_mut::<f32>().expect("owned");
            theta
                .par_chunks_mut(CHUNK)
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .zip(g.par_chunks(CHUNK))
                .for_each(|(((theta, m), v), g)| update.apply(theta, m, v, g));
        }
        let tensor = |t: FlexTensor| Tensor::<D>::from_primitive::<Flex>(t);
        let momentum = AdaptiveMomentumState::new(time, tensor(moment_1), tensor(moment_2));
        (tensor(theta), AdamWState::new(momentum))
    }
}

/// Whether the fused update applies: f32 tensors on `flex`, no AMSGrad state.
fn fuses<const D: usize>(tensor: &Tensor<D>, grad: &Tensor<D>, state: Option<&AdamWState<D>>) -> bool {
    let on_flex_f32 = |t: &Tensor<D>| t.dtype() == DType::F32 && t.clone().try_into_primitive::<Flex>().is_ok();
    on_flex_f32(tensor)
        && on_flex_f32(grad)
        && state.is_none_or(|s| {
            s.momentum.max_moment_2.is_none() && on_flex_f32(&s.momentum.moment_1) && on_flex_f32(&s.momentum.moment_2)
        })
}

/// The scalars of one step, in the order burn applies them.
#[derive(Clone, Copy)]
struct Update {
    beta_1: f32,
    beta_2: f32,
    factor_1: f32,
    factor_2: f32,
    correction_1: f32,
    correction_2: f32,
    epsilon: f32,
    keep: f32,
    lr: f32,
    first: bool,
    /// The clipping's factor (1: not clipped).
    grad_scale: f32,
}

impl Update {
    fn apply(&self, theta: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
        for (((theta, m), v), &g) in theta.iter_mut().zip(m).zip(v).zip(g) {
            // burn multiplies by the factor only where it clips; × 1 is exact.
            let g = g * self.grad_scale;
            // The first step starts the moments from the gradient alone, as
            // burn does (not from 0 · β, which could differ in a zero's sign).
            if self.first {
                *m = g * self.factor_1;
                *v = (g * g) * self.factor_2;
            } else {
                *m = *m * self.beta_1 + g * self.factor_1;
                *v = *v * self.beta_2 + (g * g) * self.factor_2;
            }
            let m_hat = *m / self.correction_1;
            let v_hat = *v / self.correction_2;
            let delta = m_hat / (v_hat.sqrt() + self.epsilon);
            *theta = *theta * self.keep - delta * self.lr;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::{Module, Param};
    use burn::optim::GradientsParams;
    use burn::tensor::Distribution;

    #[derive(Module, Debug)]
    struct Two {
        a: Param<Tensor<2>>,
        b: Param<Tensor<1>>,
    }

    fn bits(model: &Two) -> Vec<u32> {
        let mut out: Vec<u32> = Vec::new();
        for data in [model.a.val().into_data(), model.b.val().into_data()] {
            out.extend(data.iter::<f32>().map(f32::to_bits));
        }
        out
    }

    /// Two parameters drawn at random, `a` of `rows × cols`, on flex's autodiff.
    fn random(rows: usize, cols: usize) -> Two {
        let ad = Device::flex().autodiff();
        Two {
            a: Param::from_tensor(Tensor::random([rows, cols], Distribution::Normal(0.0, 1.0), &ad)),
            b: Param::from_tensor(Tensor::random([33], Distribution::Normal(0.0, 1.0), &ad)),
        }
    }

    /// One optimizer step at `step` on a loss whose gradients grow with it.
    fn step(model: Two, optim: &mut ModuleOptimizer, step: usize) -> Two {
        let loss =
            (model.a.val().powi_scalar(2).sum() * (step as f64 + 1.0) + (model.b.val() * 3.0).sin().sum()).backward();
        let grads = GradientsParams::from_grads(loss, &model);
        optim.step(1e-2, model, grads)
    }

    const BETAS_EPSILON_DECAY: (f32, f32, f32, f32) = (0.9, 0.95, 1e-8, 0.1);

    /// Ours, and burn's AdamW, with the same settings.
    fn ours(clip: Option<f32>) -> ModuleOptimizer {
        let (b1, b2, eps, wd) = BETAS_EPSILON_DECAY;
        AdamW::new(b1, b2, eps, wd).init(clip)
    }

    fn burns(clip: Option<f32>) -> ModuleOptimizer {
        let (b1, b2, eps, wd) = BETAS_EPSILON_DECAY;
        AdamWConfig::new()
            .with_beta_1(b1)
            .with_beta_2(b2)
            .with_epsilon(eps)
            .with_weight_decay(wd)
            .with_grad_clipping(clip.map(burn::grad_clipping::GradientClippingConfig::Norm))
            .init()
    }

    /// Five steps with weight decay, then a save and load of the optimizer
    /// state and two more: every weight bit-identical to burn's AdamW's.
    #[test]
    fn steps_bit_identical_to_burns_adamw_across_a_state_round_trip() {
        let start = random(70, 300);
        let run = |mut optim: ModuleOptimizer| {
            let mut model = start.clone();
            for at in 0..7 {
                if at == 5 {
                    let bytes = optim.into_bytes().expect("save");
                    optim = optim.clone().from_bytes(bytes).expect("load");
                }
                model = step(model, &mut optim, at);
            }
            bits(&model)
        };
        let want = run(burns(None));
        let got = run(ours(None));
        assert_ne!(want, bits(&start), "the weights moved");
        assert_eq!(got, want);
    }

    /// Clipped steps of a parameter over 4 M elements, where burn's own
    /// norm is summed in parallel: the same weights on 1 to 4 threads, and
    /// burn's clipped AdamW's to within rounding.
    #[test]
    fn clipped_steps_are_the_same_on_any_number_of_threads_and_match_burns_clipping() {
        let start = random(2048, 2100);
        let run = |mut optim: ModuleOptimizer, threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            // Gradients of norm ~2 900 and ~4: the clip to 1 scales both.
            pool.install(|| (0..3).fold(start.clone(), |model, at| step(model, &mut optim, at)))
        };
        let one = run(ours(Some(1.0)), 1);
        for threads in [2, 3, 4, 2, 3, 4] {
            let differ = bits(&run(ours(Some(1.0)), threads))
                .iter()
                .zip(bits(&one))
                .filter(|(a, b)| **a != *b)
                .count();
            assert_eq!(differ, 0, "weights differ from one thread's on {threads} threads");
        }
        let theirs = run(burns(Some(1.0)), 1);
        let worst = bits(&one)
            .iter()
            .zip(bits(&theirs))
            .map(|(&a, b)| (f32::from_bits(a) - f32::from_bits(b)).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "{worst}");
        assert_ne!(bits(&one), bits(&start), "the weights moved");
    }
}
