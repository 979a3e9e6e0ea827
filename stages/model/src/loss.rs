//! Next-token cross-entropy, with a mask so instruction tuning can count
//! only response tokens.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

/// Mean negative log-likelihood of `targets [b, t]` under `logits [b, t, v]`,
/// over positions where `weights [b, t]` is 1 (all when `None`).
pub fn cross_entropy(logits: Tensor<3>, targets: Tensor<2, Int>, weights: Option<Tensor<2>>) -> Tensor<1> {
    let [b, t, _] = logits.dims();
    let logp = log_softmax(logits, 2);
    let picked = logp.gather(2, targets.reshape([b, t, 1])).reshape([b, t]);
    match weights {
        None => picked.mean().neg(),
        Some(w) => {
            // A row set with no counted position (a packed window of
            // prompts only) contributes zero loss rather than 0/0.
            let total = w.clone().sum().clamp_min(1.0);
            (picked * w).sum().neg() / total
        }
    }
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
