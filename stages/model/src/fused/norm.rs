//! The squared L2 norm of a tensor, summed in an order fixed by its length
//! alone, so the same gradients give the same norm bit for bit on any
//! number of threads.
//!
//! Why: burn's `square().sum()` on `flex` sums a tensor of 4 M elements or
//! more with rayon's `par_chunks(..).sum()`, whose reduction tree follows
//! how the work was stolen; its last bits vary from run to run. A clipping
//! coefficient from it scales every weight of the parameter (SmolLM2's
//! embedding has 28 M), so full training was not repeatable.

use burn::tensor::{DType, Tensor};
use burn_flex::Flex;
use rayon::prelude::*;

/// Elements per partial sum: the partial sums are in index order whatever
/// thread computed them.
const CHUNK: usize = 1 << 16;

/// Σ x² over `values`, in f64: each chunk's sum in order, then the chunks'.
pub fn sum_of_squares(values: &[f32]) -> f64 {
    let partial: Vec<f64> = values
        .par_chunks(CHUNK)
        .map(|chunk| chunk.iter().map(|&x| x as f64 * x as f64).sum::<f64>())
        .collect();
    partial.iter().sum()
}

/// Σ x² over `tensor` in a fixed order, for f32 tensors on `flex`; `None`
/// elsewhere (a GPU backend's reduction is its own, and better read back
/// once for many tensors than once for each).
pub fn fixed_order_squared_norm<const D: usize>(tensor: &Tensor<D>) -> Option<f64> {
    if tensor.dtype() != DType::F32 {
        return None;
    }
    let flex = tensor.clone().try_into_primitive::<Flex>().ok()?.to_contiguous();
    flex.as_slice::<f32>().map(sum_of_squares)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    #[test]
    fn the_same_values_give_the_same_norm_on_any_number_of_threads() {
        // Over 4 M elements, where burn's own sum goes parallel.
        let t: Tensor<2> = Tensor::random([2048, 2500], Distribution::Normal(0.0, 1.0), &Device::flex());
        let bits = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| fixed_order_squared_norm(&t).expect("f32 on flex").to_bits())
        };
        let once = bits(2);
        for threads in [1, 2, 3, 4, 2, 2] {
            assert_eq!(bits(threads), once, "on {threads} threads");
        }
        // And it is the sum of squares, to f64's precision.
        let values: Vec<f32> = t.into_data().iter::<f32>().collect();
        let plain: f64 = values.iter().map(|&x| x as f64 * x as f64).sum();
        assert!(
            (f64::from_bits(once) - plain).abs() < 1e-9 * plain,
            "{} {plain}",
            f64::from_bits(once)
        );
    }

    #[test]
    fn a_strided_tensor_is_summed_too_and_other_dtypes_are_left_to_burn() {
        let t: Tensor<2> = Tensor::from_floats([[1.0, 2.0], [3.0, 4.0]], &Device::flex());
        assert_eq!(fixed_order_squared_norm(&t.clone().transpose()), Some(30.0));
        assert_eq!(fixed_order_squared_norm(&t.cast(burn::tensor::FloatDType::BF16)), None);
    }
}
