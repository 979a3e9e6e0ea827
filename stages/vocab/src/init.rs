//! How each new row of an extended vocabulary starts: a rule per row, chosen
//! once from the init and the evidence for each new token, then applied to
//! the embedding and to an untied head alike (a weighted sum of old rows
//! means the same old tokens in both).

use std::collections::BTreeMap;

use babelflow_model::burn::tensor::Device;
use babelflow_model::resize::{AddedTokens, Matrix};

use crate::multivariate;
use babelflow_stage::rng::Rng;

/// The `init` choices of `resize-vocab`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// The mean of all old rows, plus N(0, noise²) per value.
    Mean { noise: f64 },
    /// The mean of the rows of the pieces the old tokenizer splits the new
    /// token into (`base_pieces` in added_tokens.json).
    SubwordMean,
    /// A draw from N(μ, scale·Σ) of the old rows (Hewitt 2021; transformers'
    /// `resize_token_embeddings` default with scale 1e-9).
    Multivariate { covariance_scale: f64 },
    /// FOCUS: a sparsemax-weighted sum of old tokens close in an embedding
    /// space trained on target text (`focus` module).
    Focus,
    /// Trans-tokenization: the alignment-weighted mean of the old tokens a
    /// new token translates to in parallel text (`align` module).
    Aligned,
}

impl Init {
    pub fn name(self) -> &'static str {
        match self {
            Init::Mean { .. } => "mean",
            Init::SubwordMean => "subword-mean",
            Init::Multivariate { .. } => "multivariate",
            Init::Focus => "focus",
            Init::Aligned => "aligned",
        }
    }
}

/// Old rows and their weights in one new row; the weights sum to 1.
pub type Weights = Vec<(u32, f32)>;

/// For each new row, what the text says it is made of (None: nothing).
pub type Evidence = Vec<Option<Weights>>;

/// What one new row is made of.
#[derive(Debug, Clone, PartialEq)]
pub enum RowRule {
    /// A weighted sum of old rows; the weights sum to 1.
    Weighted(Weights),
    /// The mean of the old rows plus N(0, noise²) per value.
    Mean { noise: f64 },
    /// A draw from N(μ, scale·Σ) of the old rows.
    Multivariate { covariance_scale: f64 },
}

/// A rule for every new row (row `base_vocab_size + i` is `rules[i]`), and
/// how many rows each rule made, by name, for stats.json.
#[derive(Debug, Clone, PartialEq)]
pub struct RowPlan {
    pub rules: Vec<RowRule>,
    pub made_by: BTreeMap<String, usize>,
}

/// Equal weights over a token's old pieces (a piece twice weighs twice).
fn pieces_rule(pieces: &[u32]) -> Option<Weights> {
    (!pieces.is_empty()).then(|| pieces.iter().map(|&p| (p, 1.0 / pieces.len() as f32)).collect())
}

/// Chooses each new row's rule. `evidence[i]`, for `focus` and `aligned`,
/// is the weighted old tokens found for new row `i` (None: the text said
/// nothing about it); a row without evidence falls back to its pieces, then
/// to the mean, and `made_by` says how many did.
pub fn plan(init: Init, added: &AddedTokens, evidence: &[Option<Weights>]) -> Result<RowPlan, String> {
    let base = added.base_vocab_size;
    let new = added
        .vocab_size
        .checked_sub(base)
        .ok_or_else(|| format!("vocab_size {} is below base_vocab_size {base}", added.vocab_size))?;
    let mut pieces: Vec<&[u32]> = vec![&[]; new];
    for a in &added.added {
        let slot = a.id.checked_sub(base).and_then(|i| pieces.get_mut(i)).ok_or_else(|| {
            format!(
                "added token {:?} has id {}, outside {base}..{}",
                a.token, a.id, added.vocab_size
            )
        })?;
        if let Some(p) = a.base_pieces.iter().find(|&&p| p as usize >= base) {
            return Err(format!(
                "added token {:?} (id {}): piece {p} is not an old row (< {base})",
                a.token, a.id
            ));
        }
        *slot = &a.base_pieces;
    }
    let mut made_by = BTreeMap::new();
    let mut rules = Vec::with_capacity(new);
    for (i, pieces) in pieces.into_iter().enumerate() {
        let (name, rule) = match init {
            Init::Mean { noise } => ("mean", RowRule::Mean { noise }),
            Init::Multivariate { covariance_scale } => ("multivariate", RowRule::Multivariate { covariance_scale }),
            Init::SubwordMean | Init::Focus | Init::Aligned => {
                let found = evidence.get(i).cloned().flatten().filter(|w| !w.is_empty());
                match (init, found, pieces_rule(pieces)) {
                    (Init::Focus | Init::Aligned, Some(w), _) => (init.name(), RowRule::Weighted(w)),
                    (Init::SubwordMean, _, Some(w)) => ("subword-mean", RowRule::Weighted(w)),
                    (_, _, Some(w)) => ("subword-mean (no evidence in the text)", RowRule::Weighted(w)),
                    (_, _, None) => ("mean (no old pieces)", RowRule::Mean { noise: 0.0 }),
                }
            }
        };
        *made_by.entry(name.to_string()).or_insert(0) += 1;
        rules.push(rule);
    }
    Ok(RowPlan { rules, made_by })
}

/// The new rows (`rules.len() × d` values) of one matrix whose old rows are
/// `old` (`[rows, d]`). Draws come from `seed`, a different stream for the
/// head than for the embedding.
pub fn apply(
    plan: &RowPlan,
    matrix: Matrix,
    old: &[f32],
    d: usize,
    seed: u64,
    device: &Device,
) -> Result<Vec<f32>, String> {
    let rows = old.len() / d.max(1);
    if rows == 0 {
        return Err("the model has no rows to start new ones from".into());
    }
    let mut rng = Rng::new(match matrix {
        Matrix::Embedding => seed,
        Matrix::Head => seed ^ 0x6865_6164,
    });
    let mean = multivariate::row_mean(old, d);

    let drawn = plan
        .rules
        .iter()
        .filter(|r| matches!(r, RowRule::Multivariate { .. }))
        .count();
    let scale = plan.rules.iter().find_map(|r| match r {
        RowRule::Multivariate { covariance_scale } => Some(*covariance_scale),
        _ => None,
    });
    let mut samples = match scale {
        Some(scale) => multivariate::sample(old, &mean, drawn, scale, &mut rng, device)?,
        None => Vec::new(),
    }
    .into_iter();

    let mut out = Vec::with_capacity(plan.rules.len() * d);
    for rule in &plan.rules {
        match rule {
            RowRule::Weighted(weights) => {
                let mut acc = vec![0f64; d];
                for &(id, w) in weights {
                    let row = old
                        .get(id as usize * d..(id as usize + 1) * d)
                        .ok_or_else(|| format!("old row {id} does not exist (the model has {rows})"))?;
                    for (a, x) in acc.iter_mut().zip(row) {
                        *a += w as f64 * *x as f64;
                    }
                }
                out.extend(acc.iter().map(|a| *a as f32));
            }
            RowRule::Mean { noise } => {
                out.extend(mean.iter().map(|m| (m + noise * rng.normal()) as f32));
            }
            RowRule::Multivariate { .. } => out.extend(samples.by_ref().take(d)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use babelflow_model::resize::AddedToken;

    fn added(base: usize, vocab: usize, tokens: &[(usize, &[u32])]) -> AddedTokens {
        AddedTokens {
            base_vocab_size: base,
            vocab_size: vocab,
            added: tokens
                .iter()
                .map(|(id, pieces)| AddedToken {
                    id: *id,
                    token: format!("t{id}"),
                    base_pieces: pieces.to_vec(),
                })
                .collect(),
        }
    }

    #[test]
    fn subword_mean_rows_are_means_of_their_pieces_and_the_mean_without_any() {
        let old = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]; // 3 rows of width 2
        let plan = plan(Init::SubwordMean, &added(3, 5, &[(3, &[0, 2])]), &[]).unwrap();
        let new = apply(&plan, Matrix::Embedding, &old, 2, 0, &Device::flex()).unwrap();
        assert_eq!(new, [3.0, 4.0, 3.0, 4.0]);
        assert_eq!(plan.made_by["subword-mean"], 1);
        assert_eq!(plan.made_by["mean (no old pieces)"], 1);
    }

    #[test]
    fn mean_with_noise_is_near_the_mean_and_repeats_for_a_seed() {
        let old = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let plan = plan(Init::Mean { noise: 0.1 }, &added(3, 4, &[]), &[]).unwrap();
        let a = apply(&plan, Matrix::Embedding, &old, 2, 1, &Device::flex()).unwrap();
        let b = apply(&plan, Matrix::Embedding, &old, 2, 1, &Device::flex()).unwrap();
        assert_eq!(a, b);
        assert!(a[0] != 3.0 && (a[0] - 3.0).abs() < 1.0);
        let other = apply(&plan, Matrix::Embedding, &old, 2, 2, &Device::flex()).unwrap();
        assert_ne!(a, other);
    }

    #[test]
    fn evidence_wins_and_rows_without_it_fall_back_to_pieces_then_the_mean() {
        let old = [1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0];
        let tokens = added(3, 6, &[(3, &[0]), (4, &[1])]);
        let evidence = vec![Some(vec![(2, 1.0)]), None, None];
        let plan = plan(Init::Aligned, &tokens, &evidence).unwrap();
        let new = apply(&plan, Matrix::Head, &old, 2, 0, &Device::flex()).unwrap();
        assert_eq!(&new[..2], &[1.0, 1.0], "from the evidence, not its piece");
        assert_eq!(&new[2..4], &[0.0, 1.0], "its piece");
        assert!((new[4] - 2.0 / 3.0).abs() < 1e-6, "the mean");
        assert_eq!(plan.made_by["aligned"], 1);
        assert_eq!(plan.made_by["subword-mean (no evidence in the text)"], 1);
        assert_eq!(plan.made_by["mean (no old pieces)"], 1);
    }

    #[test]
    fn a_piece_past_the_old_rows_is_refused_by_name() {
        let err = plan(Init::SubwordMean, &added(3, 4, &[(3, &[0, 7])]), &[]).unwrap_err();
        assert!(err.contains("piece 7 is not an old row"), "{err}");
        let err = plan(Init::SubwordMean, &added(3, 4, &[(9, &[0])]), &[]).unwrap_err();
        assert!(err.contains("outside 3..4"), "{err}");
    }
}
