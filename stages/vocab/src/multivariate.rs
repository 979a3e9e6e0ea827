//! Draws from N(μ, s·Σ), μ and Σ the mean and covariance of the old rows
//! (Hewitt 2021; transformers' default for new embeddings, s = 1e-9).
//!
//! With C the centred old rows (`n × d`) and Σ = CᵀC / n, the row
//! x = μ + √(s/n) · Cᵀz, z ~ N(0, I_n), has exactly that distribution: no
//! d × d factorisation, and no failure when Σ is singular (fewer old rows
//! than dimensions, or collinear ones), where transformers falls back to the
//! bare mean. The `k × n` by `n × d` product is the backend's.

use babelflow_model::burn::tensor::{Device, Tensor, TensorData};

use babelflow_stage::rng::Rng;

/// Values of the `z` block per product: bounds the memory of one chunk
/// (64 MiB of f32) whatever the vocabulary.
const CHUNK_VALUES: usize = 16 << 20;

/// The mean of the `[n, d]` rows `old`, in f64.
pub fn row_mean(old: &[f32], d: usize) -> Vec<f64> {
    let n = old.len() / d.max(1);
    let mut mean = vec![0f64; d];
    for row in old.chunks_exact(d) {
        for (m, x) in mean.iter_mut().zip(row) {
            *m += *x as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n.max(1) as f64);
    mean
}

/// `k` rows of width `d` drawn from the distribution of the `[n, d]` rows
/// `old`, whose mean (`row_mean`) is `mean`.
pub fn sample(
    old: &[f32],
    mean: &[f64],
    k: usize,
    scale: f64,
    rng: &mut Rng,
    device: &Device,
) -> Result<Vec<f32>, String> {
    if !(scale.is_finite() && scale >= 0.0) {
        return Err(format!("covariance_scale must be a finite number ≥ 0, not {scale}"));
    }
    let d = mean.len();
    let n = old.len() / d.max(1);
    if n == 0 || k == 0 {
        return Ok(Vec::new());
    }
    let centred: Vec<f32> = old
        .chunks_exact(d)
        .flat_map(|row| row.iter().zip(mean).map(|(x, m)| (*x as f64 - m) as f32))
        .collect();
    let centred: Tensor<2> = Tensor::from_data(TensorData::new(centred, [n, d]), device);
    let factor = (scale / n as f64).sqrt();
    let per_chunk = (CHUNK_VALUES / n).max(1);
    let mut out = Vec::with_capacity(k * d);
    let mut done = 0;
    while done < k {
        let rows = per_chunk.min(k - done);
        let z = rng.normals(rows * n, factor);
        let z: Tensor<2> = Tensor::from_data(TensorData::new(z, [rows, n]), device);
        let drawn = z
            .matmul(centred.clone())
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| format!("reading drawn rows back: {e:?}"))?;
        for row in drawn.chunks_exact(d) {
            out.extend(row.iter().zip(mean).map(|(x, m)| (*x as f64 + m) as f32));
        }
        done += rows;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mean and covariance of `rows × d` values.
    fn moments(x: &[f32], d: usize) -> (Vec<f64>, Vec<f64>) {
        let n = (x.len() / d) as f64;
        let mut mean = vec![0f64; d];
        for row in x.chunks_exact(d) {
            for (m, v) in mean.iter_mut().zip(row) {
                *m += *v as f64 / n;
            }
        }
        let mut cov = vec![0f64; d * d];
        for row in x.chunks_exact(d) {
            for i in 0..d {
                for j in 0..d {
                    cov[i * d + j] += (row[i] as f64 - mean[i]) * (row[j] as f64 - mean[j]) / n;
                }
            }
        }
        (mean, cov)
    }

    /// Old rows with a correlated, shifted distribution.
    fn old_rows(n: usize, rng: &mut Rng) -> Vec<f32> {
        (0..n)
            .flat_map(|_| {
                let (a, b, c) = (rng.normal(), rng.normal(), rng.normal());
                [1.0 + a, -2.0 + 0.8 * a + 0.3 * b, 0.5 * c, 3.0 - a + 0.1 * c].map(|v| v as f32)
            })
            .collect()
    }

    #[test]
    fn drawn_rows_have_the_old_rows_mean_and_scaled_covariance() {
        let d = 4;
        let old = old_rows(200, &mut Rng::new(1));
        let (mu, sigma) = moments(&old, d);
        let k = 20_000;
        for scale in [1.0, 0.01] {
            let drawn = sample(&old, &row_mean(&old, d), k, scale, &mut Rng::new(5), &Device::flex()).unwrap();
            assert_eq!(drawn.len(), k * d);
            let (m, c) = moments(&drawn, d);
            for i in 0..d {
                // Standard error of a mean of k draws: sqrt(scale·Σii / k).
                let se = (scale * sigma[i * d + i] / k as f64).sqrt();
                assert!(
                    (m[i] - mu[i]).abs() < 5.0 * se + 1e-6,
                    "mean {i}: {} vs {}",
                    m[i],
                    mu[i]
                );
                for j in 0..d {
                    // Standard error of a covariance: ~sqrt((ΣiiΣjj + Σij²)/k)·scale.
                    let se =
                        scale * ((sigma[i * d + i] * sigma[j * d + j] + sigma[i * d + j].powi(2)) / k as f64).sqrt();
                    let want = scale * sigma[i * d + j];
                    assert!(
                        (c[i * d + j] - want).abs() < 5.0 * se,
                        "cov {i},{j}: {} vs {want}",
                        c[i * d + j]
                    );
                }
            }
        }
    }

    #[test]
    fn a_seed_repeats_its_draws_and_fewer_rows_than_dimensions_still_draw() {
        let old = old_rows(3, &mut Rng::new(2));
        let mean = row_mean(&old, 4);
        let a = sample(&old, &mean, 10, 1.0, &mut Rng::new(9), &Device::flex()).unwrap();
        let b = sample(&old, &mean, 10, 1.0, &mut Rng::new(9), &Device::flex()).unwrap();
        assert_eq!(a, b);
        assert!(a.iter().all(|v| v.is_finite()));
        assert!(sample(&old, &mean, 1, f64::NAN, &mut Rng::new(9), &Device::flex()).is_err());
    }
}
