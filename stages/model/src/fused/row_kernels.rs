//! Row-wise softmax arithmetic in plain Rust that the compiler vectorises:
//! an `exp` built from a range reduction and a polynomial (no libm call per
//! element), compiled for AVX-512 and AVX2 and chosen at run time.
//!
//! Why: burn's CPU backend calls the scalar `expf` once per element on one
//! thread; in a training step of the bench's d256 model that was the second
//! largest cost after the matrix products.

/// `exp(x)` to within 2 ulp-ish (relative error below 3e-7) for x in
/// [-87, 88]; 0 below -87.3 (where f32's normal range ends), so a masked
/// `-inf` gives exactly 0.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so n·LN2_HI is exact for |n| < 2^9.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let clamped = x.clamp(-87.3, 88.0);
    let n = (clamped * LOG2E).round_ties_even();
    let r = clamped - n * LN2_HI - n * LN2_LO;
    // Taylor to r^7 on |r| ≤ ln2/2: truncation error below 1.2e-8.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let scale = f32::from_bits(((n as i32 + 127) << 23) as u32);
    if x < -87.3 {
        0.0
    } else {
        p * scale
    }
}

const LANES: usize = 16;

/// Largest element of a non-empty row.
#[inline(always)]
fn max_generic(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a = a.max(x);
        }
    }
    let mut m = acc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for &x in tail {
        m = m.max(x);
    }
    m
}

/// Σ term(row₀[j], row₁[j], …) over equally long rows: LANES partial sums,
/// then the tail in order. A fixed order, so the result does not depend on
/// threads, in the shape the compiler vectorises.
#[inline(always)]
fn lane_sum<const K: usize>(rows: [&[f32]; K], term: impl Fn([f32; K]) -> f32) -> f32 {
    let len = rows[0].len();
    let full = len - len % LANES;
    let mut acc = [0.0f32; LANES];
    for start in (0..full).step_by(LANES) {
        let chunks: [&[f32; LANES]; K] = rows.map(|row| row[start..start + LANES].try_into().expect("LANES values"));
        for (lane, a) in acc.iter_mut().enumerate() {
            *a += term(chunks.map(|chunk| chunk[lane]));
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for j in full..len {
        sum += term(rows.map(|row| row[j]));
    }
    sum
}

/// Σ exp(x - shift) over the row.
#[inline(always)]
fn sum_exp_generic(row: &[f32], shift: f32) -> f32 {
    lane_sum([row], |[x]| exp(x - shift))
}

/// `row ← exp(row - shift)`, returning the sum of the new values.
#[inline(always)]
fn exp_in_place_generic(row: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for x in &mut chunks {
        for (x, a) in x.iter_mut().zip(acc.iter_mut()) {
            *x = exp(*x - shift);
            *a += *x;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp(*x - shift);
        sum += *x;
    }
    sum
}

/// `row ← softmax(row)`, in place (the attention's scores become its
/// probabilities without a second buffer).
#[inline(always)]
fn softmax_in_place_generic(row: &mut [f32]) {
    let sum = exp_in_place_generic(row, max_generic(row));
    let inverse = 1.0 / sum;
    for x in row.iter_mut() {
        *x *= inverse;
    }
}

/// The gradient through a row softmax, in place: given its output `p` and
/// the incoming gradient `g`, `g ← scale · p ⊙ (g - ⟨g, p⟩)`.
#[inline(always)]
fn softmax_backward_in_place_generic(p: &[f32], g: &mut [f32], scale: f32) {
    let dot = lane_sum([p, g], |[p, g]| p * g);
    for (g, &p) in g.iter_mut().zip(p) {
        *g = scale * p * (*g - dot);
    }
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// SwiGLU's gate: `out = silu(gate) ⊙ up`.
#[inline(always)]
fn swiglu_generic(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &a), &b) in out.iter_mut().zip(gate).zip(up) {
        *o = a * sigmoid(a) * b;
    }
}

/// Both gradients of `silu(gate) ⊙ up` given the incoming `g`, written over
/// the inputs: `gate ← g ⊙ up ⊙ silu'(gate)`, silu'(a) = σ(a)·(1 + a·(1 - σ(a))),
/// and `up ← g ⊙ silu(gate)`.
#[inline(always)]
fn swiglu_backward_in_place_generic(gate: &mut [f32], up: &mut [f32], g: &[f32]) {
    for ((a, b), &g) in gate.iter_mut().zip(up.iter_mut()).zip(g) {
        let s = sigmoid(*a);
        let d_gate = g * *b * s * (1.0 + *a * (1.0 - s));
        *b = g * *a * s;
        *a = d_gate;
    }
}

/// `out = x · inv ⊙ w` with `inv = 1 / sqrt(mean(x²) + eps)`; returns `inv`.
#[inline(always)]
fn rms_norm_generic(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) -> f32 {
    let squares = lane_sum([x], |[x]| x * x);
    let inv = 1.0 / (squares / x.len() as f32 + eps).sqrt();
    for ((o, &x), &w) in out.iter_mut().zip(x).zip(w) {
        *o = x * inv * w;
    }
    inv
}

/// The gradient through [`rms_norm_generic`] given the incoming `g`:
/// `dx = inv · (g ⊙ w) - x · inv³ · ⟨g ⊙ w, x⟩ / d`, and `dw += g ⊙ x · inv`.
#[inline(always)]
fn rms_norm_backward_generic(x: &[f32], w: &[f32], g: &[f32], inv: f32, dx: &mut [f32], dw: &mut [f32]) {
    let dot = lane_sum([x, g, w], |[x, g, w]| g * w * x);
    let along_x = inv * inv * inv * dot / x.len() as f32;
    for ((((dx, dw), &x), &g), &w) in dx.iter_mut().zip(dw.iter_mut()).zip(x).zip(g).zip(w) {
        *dx = inv * g * w - x * along_x;
        *dw += g * x * inv;
    }
}

/// Rotary embedding of one head in HF's half-split layout:
/// `out = x ⊙ cos + rotate_half(x) ⊙ sin`, `rotate_half(x) = [-x₂, x₁]`.
#[inline(always)]
fn rope_generic(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let half = x.len() / 2;
    let (x1, x2) = x.split_at(half);
    let (out1, out2) = out.split_at_mut(half);
    for j in 0..half {
        out1[j] = x1[j] * cos[j] - x2[j] * sin[j];
        out2[j] = x2[j] * cos[half + j] + x1[j] * sin[half + j];
    }
}

/// The gradient through [`rope_generic`] given the incoming `g`.
#[inline(always)]
fn rope_backward_generic(g: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let half = g.len() / 2;
    let (g1, g2) = g.split_at(half);
    let (out1, out2) = out.split_at_mut(half);
    for j in 0..half {
        out1[j] = g1[j] * cos[j] + g2[j] * sin[half + j];
        out2[j] = g2[j] * cos[half + j] - g1[j] * sin[j];
    }
}

macro_rules! dispatch {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $generic:ident) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn wide($($arg: $ty),*) -> $ret {
                    $generic($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn narrow($($arg: $ty),*) -> $ret {
                    $generic($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features the function was compiled for.
                    return unsafe { wide($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    return unsafe { narrow($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}

dispatch!(
    /// Largest element of a non-empty row.
    fn row_max(row: &[f32]) -> f32 = max_generic
);
dispatch!(
    /// Σ exp(row - shift).
    fn row_sum_exp(row: &[f32], shift: f32) -> f32 = sum_exp_generic
);
dispatch!(
    /// `row ← exp(row - shift)`, returning Σ row.
    fn row_exp_in_place(row: &mut [f32], shift: f32) -> f32 = exp_in_place_generic
);
dispatch!(
    /// `row ← softmax(row)`.
    fn row_softmax_in_place(row: &mut [f32]) -> () = softmax_in_place_generic
);
dispatch!(
    /// `g ← scale · p ⊙ (g - ⟨g, p⟩)`, the gradient through a row softmax.
    fn row_softmax_backward_in_place(p: &[f32], g: &mut [f32], scale: f32) -> () = softmax_backward_in_place_generic
);
dispatch!(
    /// `out = x / rms(x) ⊙ w`, returning `1 / rms(x)`.
    fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) -> f32 = rms_norm_generic
);
dispatch!(
    /// `dx` and `dw +=` through [`rms_norm_row`].
    fn rms_norm_row_backward(x: &[f32], w: &[f32], g: &[f32], inv: f32, dx: &mut [f32], dw: &mut [f32]) -> () = rms_norm_backward_generic
);
dispatch!(
    /// Rotary embedding of one head.
    fn rope_head(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) -> () = rope_generic
);
dispatch!(
    /// The gradient through [`rope_head`].
    fn rope_head_backward(g: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) -> () = rope_backward_generic
);
dispatch!(
    /// `out = silu(gate) ⊙ up`.
    fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) -> () = swiglu_generic
);
dispatch!(
    /// Both gradients of `silu(gate) ⊙ up`, over the inputs.
    fn swiglu_backward_in_place(gate: &mut [f32], up: &mut [f32], g: &[f32]) -> () = swiglu_backward_in_place_generic
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_the_standard_library_over_the_range_softmax_uses() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_37;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
    }

    #[test]
    fn row_reductions_equal_the_plain_loops_at_every_length() {
        for len in [1, 7, 16, 17, 33, 100] {
            let row: Vec<f32> = (0..len).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.7).collect();
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(row_max(&row), m, "len {len}");
            let want: f64 = row.iter().map(|&x| ((x - m) as f64).exp()).sum();
            let got = row_sum_exp(&row, m) as f64;
            assert!((got - want).abs() / want < 1e-6, "len {len}: {got} vs {want}");
            let mut out = row.clone();
            let sum = row_exp_in_place(&mut out, m) as f64;
            assert!((sum - want).abs() / want < 1e-6, "len {len}: {sum} vs {want}");
            for (o, &x) in out.iter().zip(&row) {
                let want = ((x - m) as f64).exp();
                assert!((*o as f64 - want).abs() <= 1e-6 * want.max(1e-30), "len {len}");
            }
            // Softmax of the row and its gradient (scaled by 0.3) against f64 by hand.
            let scale = 0.3;
            let weights: Vec<f64> = row.iter().map(|&x| ((x - m) as f64).exp()).collect();
            let total: f64 = weights.iter().sum();
            let want: Vec<f64> = weights.iter().map(|w| w / total).collect();
            let mut p = row.clone();
            row_softmax_in_place(&mut p);
            for (got, want) in p.iter().zip(&want) {
                assert!((*got as f64 - want).abs() < 1e-6, "len {len}: {got} vs {want}");
            }
            let g: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let dot: f64 = want.iter().zip(&g).map(|(p, &g)| p * g as f64).sum();
            let mut grad = g.clone();
            row_softmax_backward_in_place(&p, &mut grad, scale);
            for i in 0..len {
                let want = scale as f64 * want[i] * (g[i] as f64 - dot);
                assert!(
                    (grad[i] as f64 - want).abs() < 1e-6,
                    "len {len}: gradient {} vs {want}",
                    grad[i]
                );
            }
        }
    }
}
