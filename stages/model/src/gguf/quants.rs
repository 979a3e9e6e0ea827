//! ggml's block formats. Each quantised type stores a row in blocks of 32
//! (or, for the k-quants, 256) values with per-block scales; dequantising
//! follows ggml's `dequantize_row_*` reference functions operation by
//! operation, so the f32 values are the ones llama.cpp and gguf-py compute
//! (tested against gguf-py's on reference blocks, `tests/gguf.rs`).

use half::{bf16, f16};

/// A ggml tensor type, by its id in the file (ggml's own spellings).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    BF16,
}

const QK_K: usize = 256;

impl GgmlType {
    pub const ALL: [GgmlType; 12] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::BF16,
    ];

    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::Q8_K => 15,
            GgmlType::BF16 => 30,
        }
    }

    /// The type with this id, or its name in ggml's list for an error.
    pub fn from_id(id: u32) -> Result<GgmlType, String> {
        GgmlType::ALL.into_iter().find(|t| t.id() == id).ok_or_else(|| {
            let name = match id {
                9 => "Q8_1",
                10 => "Q2_K",
                11 => "Q3_K",
                16 => "IQ2_XXS",
                17 => "IQ2_XS",
                18 => "IQ3_XXS",
                19 => "IQ1_S",
                20 => "IQ4_NL",
                21 => "IQ3_S",
                22 => "IQ2_S",
                23 => "IQ4_XS",
                24..=27 => "an integer type",
                28 => "F64",
                29 => "IQ1_M",
                34 => "TQ1_0",
                35 => "TQ2_0",
                _ => "unknown",
            };
            format!(
                "ggml type {id} ({name}) is not one babelflow reads (it reads {})",
                GgmlType::ALL.map(|t| t.name()).join(", ")
            )
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
            GgmlType::Q8_K => "Q8_K",
            GgmlType::BF16 => "BF16",
        }
    }

    /// (values per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q4_K => (QK_K, 144),
            GgmlType::Q5_K => (QK_K, 176),
            GgmlType::Q6_K => (QK_K, 210),
            GgmlType::Q8_K => (QK_K, 292),
        }
    }

    /// Bytes that `n` values take; `None` when `n` is not a whole number of blocks.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        let (values, bytes) = self.block();
        n.is_multiple_of(values).then_some(n / values * bytes)
    }
}

fn half_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The values `data` holds as `ty` (`data` is a whole number of blocks).
pub fn dequantize(ty: GgmlType, data: &[u8]) -> Vec<f32> {
    let (per, size) = ty.block();
    let mut out = Vec::with_capacity(data.len() / size * per);
    match ty {
        GgmlType::F32 => out.extend(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        GgmlType::F16 => out.extend(data.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())),
        GgmlType::BF16 => out.extend(data.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        _ => {
            for block in data.chunks_exact(size) {
                dequantize_block(ty, block, &mut out);
            }
        }
    }
    out
}

fn dequantize_block(ty: GgmlType, b: &[u8], y: &mut Vec<f32>) {
    match ty {
        GgmlType::Q4_0 => {
            let d = half_at(b, 0);
            let qs = &b[2..18];
            let lo: Vec<f32> = qs.iter().map(|q| ((q & 0x0F) as i32 - 8) as f32 * d).collect();
            let hi: Vec<f32> = qs.iter().map(|q| ((q >> 4) as i32 - 8) as f32 * d).collect();
            y.extend(lo);
            y.extend(hi);
        }
        GgmlType::Q4_1 => {
            let (d, m) = (half_at(b, 0), half_at(b, 2));
            let qs = &b[4..20];
            let lo: Vec<f32> = qs.iter().map(|q| (q & 0x0F) as f32 * d + m).collect();
            let hi: Vec<f32> = qs.iter().map(|q| (q >> 4) as f32 * d + m).collect();
            y.extend(lo);
            y.extend(hi);
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let (d, m, qh_at) = match ty {
                GgmlType::Q5_0 => (half_at(b, 0), None, 2),
                _ => (half_at(b, 0), Some(half_at(b, 2)), 4),
            };
            let qh = u32::from_le_bytes([b[qh_at], b[qh_at + 1], b[qh_at + 2], b[qh_at + 3]]);
            let qs = &b[qh_at + 4..qh_at + 20];
            let value = |q: u32| match m {
                None => (q as i32 - 16) as f32 * d,
                Some(m) => q as f32 * d + m,
            };
            let lo: Vec<f32> = (0..16)
                .map(|j| value((qs[j] & 0x0F) as u32 | (((qh >> j) << 4) & 0x10)))
                .collect();
            let hi: Vec<f32> = (0..16)
                .map(|j| value((qs[j] >> 4) as u32 | ((qh >> (j + 12)) & 0x10)))
                .collect();
            y.extend(lo);
            y.extend(hi);
        }
        GgmlType::Q8_0 => {
            let d = half_at(b, 0);
            y.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
        }
        GgmlType::Q8_K => {
            let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            y.extend(b[4..4 + QK_K].iter().map(|&q| d * q as i8 as f32));
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let (d, dmin) = (half_at(b, 0), half_at(b, 2));
            let scales = &b[4..16];
            let (qh, qs) = match ty {
                GgmlType::Q4_K => (None, &b[16..144]),
                _ => (Some(&b[16..48]), &b[48..176]),
            };
            for j in 0..4 {
                let (sc1, m1) = scale_min_k4(2 * j, scales);
                let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
                let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
                let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
                let q = &qs[32 * j..32 * j + 32];
                let high = |l: usize, bit: usize| qh.map_or(0, |h| ((h[l] >> bit) & 1) << 4);
                for (l, &q) in q.iter().enumerate() {
                    y.push(d1 * ((q & 0x0F) | high(l, 2 * j)) as f32 - min1);
                }
                for (l, &q) in q.iter().enumerate() {
                    y.push(d2 * ((q >> 4) | high(l, 2 * j + 1)) as f32 - min2);
                }
            }
        }
        GgmlType::Q6_K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = half_at(b, 208);
            for n in 0..2 {
                let (ql, qh, sc) = (&ql[64 * n..], &qh[32 * n..], &sc[8 * n..]);
                let mut part = [0f32; 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    part[l] = d * sc[is] as i8 as f32 * q1 as f32;
                    part[l + 32] = d * sc[is + 2] as i8 as f32 * q2 as f32;
                    part[l + 64] = d * sc[is + 4] as i8 as f32 * q3 as f32;
                    part[l + 96] = d * sc[is + 6] as i8 as f32 * q4 as f32;
                }
                y.extend(part);
            }
        }
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => unreachable!("handled by dequantize"),
    }
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j`.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `values` as Q8_0 blocks (`values.len()` a multiple of 32), bit for bit
/// what ggml's `quantize_row_q8_0_ref` writes: d = max|x| / 127 (as f16),
/// q = round(x / d), rounding half away from zero.
pub fn quantize_q8_0(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / 32 * 34);
    for block in values.chunks_exact(32) {
        let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|&x| (x * id).round() as i8 as u8));
    }
    out
}

/// `values` in a float type (F32, F16, BF16) as little-endian bytes.
pub fn encode_float(ty: GgmlType, values: &[f32]) -> Vec<u8> {
    match ty {
        GgmlType::F16 => values.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect(),
        GgmlType::BF16 => values.iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect(),
        _ => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_round_trips_within_half_a_step() {
        let values: Vec<f32> = (0..64).map(|i| ((i * 37) % 101) as f32 / 13.0 - 3.5).collect();
        let back = dequantize(GgmlType::Q8_0, &quantize_q8_0(&values));
        for (block, got) in values.chunks(32).zip(back.chunks(32)) {
            let step = block.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
            for (a, b) in block.iter().zip(got) {
                assert!((a - b).abs() <= step * 0.51 + 1e-3, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn q8_k_is_scale_times_quant() {
        let mut block = vec![0u8; 292];
        block[..4].copy_from_slice(&0.5f32.to_le_bytes());
        for (i, q) in block[4..260].iter_mut().enumerate() {
            *q = (i as i32 - 128) as i8 as u8;
        }
        let y = dequantize(GgmlType::Q8_K, &block);
        assert_eq!(y.len(), 256);
        assert_eq!((y[0], y[128], y[255]), (-64.0, 0.0, 63.5));
    }

    #[test]
    fn unsupported_types_are_named() {
        let err = GgmlType::from_id(11).unwrap_err();
        assert!(
            err.starts_with("ggml type 11 (Q3_K) is not one babelflow reads"),
            "{err}"
        );
    }
}
