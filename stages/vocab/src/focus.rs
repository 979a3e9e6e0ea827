//! FOCUS (Dobler and de Melo, EMNLP 2023): a new token starts as a
//! combination of old tokens, weighted by sparsemax over their cosine
//! similarity to it in an auxiliary embedding space learnt on target text
//! (`sgns`). Only old tokens that occur in that text take part (the
//! "overlapping" tokens of the paper: here every old token is kept, so the
//! overlap is whatever the target text uses); sparsemax leaves most weights
//! exactly zero, so a new token borrows from a few close neighbours rather
//! than the blur of a softmax.

use crate::init::Evidence;
use crate::sgns::TokenVectors;

/// Sparsemax (Martins and Astudillo 2016): the Euclidean projection of `z`
/// onto the probability simplex. Returns the non-zero entries as
/// `(index, weight)`, weights summing to 1.
pub fn sparsemax(z: &[f32]) -> Vec<(usize, f32)> {
    let mut order: Vec<usize> = (0..z.len()).collect();
    order.sort_by(|&a, &b| z[b].total_cmp(&z[a]).then(a.cmp(&b)));
    // The support is the largest k with 1 + k·z(k) > Σ_{j ≤ k} z(j).
    let (mut cumulative, mut support, mut support_sum) = (0f64, 0usize, 0f64);
    for (k, &i) in order.iter().enumerate() {
        cumulative += z[i] as f64;
        if 1.0 + (k + 1) as f64 * z[i] as f64 > cumulative {
            support = k + 1;
            support_sum = cumulative;
        }
    }
    let tau = (support_sum - 1.0) / support.max(1) as f64;
    order[..support]
        .iter()
        .map(|&i| (i, (z[i] as f64 - tau) as f32))
        .filter(|&(_, w)| w > 0.0)
        .collect()
}

fn unit(v: &[f32]) -> Option<Vec<f32>> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    (norm > 0.0).then(|| v.iter().map(|x| x / norm).collect())
}

/// For each new id `base..vocab`: the old ids it combines and their weights,
/// or `None` when the text gave the new token no vector (too rare).
pub fn weights(vectors: &TokenVectors, base: usize, vocab: usize) -> Evidence {
    let old: Vec<(u32, Vec<f32>)> = (0..base)
        .filter_map(|id| Some((id as u32, unit(vectors.get(id)?)?)))
        .collect();
    (base..vocab)
        .map(|id| {
            let new = unit(vectors.get(id)?)?;
            if old.is_empty() {
                return None;
            }
            let similarity: Vec<f32> = old
                .iter()
                .map(|(_, v)| v.iter().zip(&new).map(|(a, b)| a * b).sum())
                .collect();
            Some(sparsemax(&similarity).into_iter().map(|(i, w)| (old[i].0, w)).collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparsemax_projects_onto_the_simplex_and_zeroes_the_far_tail() {
        let w = sparsemax(&[0.9, 0.8, 0.1, -0.5]);
        assert_eq!(w.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1]);
        assert!((w[0].1 - 0.55).abs() < 1e-6 && (w[1].1 - 0.45).abs() < 1e-6, "{w:?}");
        // Far apart: all the weight on the largest.
        assert_eq!(sparsemax(&[3.0, 0.0, 1.0]), [(0, 1.0)]);
        // Ties share equally.
        let tie = sparsemax(&[0.2, 0.2, 0.2, 0.2]);
        assert_eq!(tie.len(), 4);
        assert!(tie.iter().all(|(_, w)| (w - 0.25).abs() < 1e-6));
    }

    #[test]
    fn a_new_token_takes_its_weights_from_the_old_tokens_it_is_near() {
        // Old ids 0..3 and new id 3 in a 2-d space: the new token points
        // between old 0 and old 1, away from old 2.
        let vectors = TokenVectors {
            dim: 2,
            vectors: vec![1.0, 0.0, 0.8, 0.6, -1.0, 0.0, 0.95, 0.3, 0.0, 0.0],
            counts: vec![5, 5, 5, 5, 0],
            min_count: 3,
        };
        let w = weights(&vectors, 3, 5);
        let first = w[0].as_ref().unwrap();
        assert_eq!(first.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [0, 1]);
        assert!((first.iter().map(|(_, w)| w).sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(w[1].is_none(), "id 4 never occurred: no evidence");
    }
}
