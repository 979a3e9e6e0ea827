//! Next-token cross-entropy, with a mask so instruction tuning can count
//! only response tokens.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

use crate::fused::nll::try_token_nll;

/// Mean negative log-likelihood of `targets [b, t]` under `logits [b, t, v]`,
/// over positions where `weights [b, t]` is 1 (all when `None`).
pub fn cross_entropy(logits: Tensor<3>, targets: Tensor<2, Int>, weights: Option<Tensor<2>>) -> Tensor<1> {
    let nll = token_nll(logits, targets);
    match weights {
        None => nll.mean(),
        Some(w) => {
            // A row set with no counted position (a packed window of
            // prompts only) contributes zero loss rather than 0/0.
            let total = w.clone().sum().clamp_min(1.0);
            (nll * w).sum() / total
        }
    }
}

/// `-log p(target)` per position, `[b, t]`: the fused kernel on `flex`,
/// burn's composed ops elsewhere.
pub fn token_nll(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<2> {
    try_token_nll(logits, &targets).or_else(|logits| composed_nll(logits, targets))
}

/// `-log_softmax(logits)[target]` from burn's tensor ops: what every backend
/// without the fused kernel runs.
pub fn composed_nll(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<2> {
    let [b, t, _] = logits.dims();
    log_softmax(logits, 2)
        .gather(2, targets.reshape([b, t, 1]))
        .reshape([b, t])
        .neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn matches_a_hand_computation() {
        let device = Device::flex();
        // One position, logits [0, ln 3]: p(target=1) = 3/4.
        let logits = Tensor::<3>::from_data(TensorData::new(vec![0.0f32, 3f32.ln()], [1, 1, 2]), &device);
        let targets = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64], [1, 1]), &device);
        let loss: f32 = cross_entropy(logits, targets, None).into_scalar();
        assert!((loss - (4.0f32 / 3.0).ln()).abs() < 1e-6, "{loss}");
    }

    /// The fused kernel against burn's own ops: loss and gradient, with and
    /// without autodiff, on logits wide enough for the vector loops' tails;
    /// logits the caller keeps are left as they were.
    #[test]
    fn the_fused_kernel_equals_log_softmax_in_value_and_gradient() {
        let device = Device::flex();
        let [b, t, v] = [2, 3, 37];
        let values: Vec<f32> = (0..b * t * v)
            .map(|i| ((i * 7919 % 101) as f32 - 50.0) * 0.13)
            .collect();
        let ids: Vec<i64> = (0..b * t).map(|i| (i * 11 % v) as i64).collect();
        let targets = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t]), &device);
        let weights = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 0.0, 1.0, 1.0, 0.5, 0.0], [b, t]), &device);
        let ad = device.clone().autodiff();
        // `Owned`: the kernel holds the only reference to the logits (as in
        // training) and works in their buffer. `Shared`: the caller keeps
        // them, and they must stay as they were.
        enum Path {
            Composed,
            Owned,
            Shared,
        }
        let run = |path: Path| {
            let leaf = Tensor::<3>::from_data(TensorData::new(values.clone(), [b, t, v]), &ad).require_grad();
            let logits = leaf.clone() * 1.0;
            let targets = targets.clone().to_device(&ad);
            let mut kept = None;
            let nll = match path {
                Path::Composed => composed_nll(logits, targets),
                Path::Owned => try_token_nll(logits, &targets).done(),
                Path::Shared => {
                    kept = Some(logits.clone());
                    try_token_nll(logits, &targets).done()
                }
            };
            let loss = (nll.clone() * weights.clone().to_device(&ad)).sum();
            let grads = loss.backward();
            if let Some(logits) = kept {
                assert_eq!(logits.into_data().try_to_vec::<f32>().unwrap(), values);
            }
            let grad = leaf
                .grad(&grads)
                .expect("logits get a gradient")
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            (nll.into_data().try_to_vec::<f32>().unwrap(), grad)
        };
        assert_eq!(run(Path::Shared), run(Path::Owned));
        let (fused, fused_grad) = run(Path::Owned);
        let (composed, composed_grad) = run(Path::Composed);
        for (f, c) in fused.iter().zip(&composed) {
            assert!((f - c).abs() < 2e-6 * c.abs().max(1.0), "{f} vs {c}");
        }
        for (f, c) in fused_grad.iter().zip(&composed_grad) {
            assert!((f - c).abs() < 1e-6, "gradient {f} vs {c}");
        }
        // Without autodiff (evaluation) the same values.
        let logits = Tensor::<3>::from_data(TensorData::new(values.clone(), [b, t, v]), &device);
        let plain = try_token_nll(logits, &targets).done();
        assert_eq!(plain.into_data().try_to_vec::<f32>().unwrap(), fused);
    }

    #[test]
    fn masked_positions_do_not_count() {
        let device = Device::flex();
        let logits = Tensor::<3>::from_data(TensorData::new(vec![0.0f32, 0.0, 5.0, 0.0], [1, 2, 2]), &device);
        let targets = Tensor::<2, Int>::from_data(TensorData::new(vec![0i64, 1], [1, 2]), &device);
        let only_first = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 0.0], [1, 2]), &device);
        let loss: f32 = cross_entropy(logits, targets, Some(only_first)).into_scalar();
        assert!((loss - 2f32.ln()).abs() < 1e-6, "{loss}");
    }
}
