//! SentencePiece's BPE rule written as merges: one definition shared by
//! the crate that writes tokenizers (`extend-vocab`, `train-tokenizer`) and
//! the crate that moves them in and out of GGUF, so the two never drift.
//!
//! A SentencePiece-style model (LLaMA-1/2, and llama.cpp's `llama`
//! tokenizer) has no merge list: it joins any two adjacent pieces whose
//! concatenation is in the vocabulary, best-scoring result first. An HF
//! BPE joins only the pairs its merge list names. The two agree exactly
//! when the list names every split of every token into two tokens, in the
//! order of the tokens' scores: transformers' `generate_merges`, here
//! [`merges_from_scores`]. GGUF stores scores, not merges; a token's score
//! is minus the rank of the first merge that makes it ([`scores_from_merges`]).
//! A merge list is *closed* ([`close`]) when going through scores and back
//! gives it again: then babelflow's tokenizer, the GGUF it exports (in
//! llama.cpp and transformers) and that GGUF imported back give the same ids.

use std::collections::HashMap;

use serde_json::Value;

/// True for the style this module is about: a byte-fallback BPE without
/// ByteLevel (LLaMA-1/2), which GGUF stores as scores (`llama`), not
/// merges (`gpt2`).
pub fn is_sentencepiece_style(tokenizer: &Value) -> bool {
    tokenizer["model"]["byte_fallback"].as_bool().unwrap_or(false) && !is_byte_level(tokenizer)
}

/// True when any part of the tokenizer (pre-tokenizer, decoder,
/// post-processor) is ByteLevel: GPT-2's byte-to-character mapping.
pub fn is_byte_level(tokenizer: &Value) -> bool {
    tokenizer.to_string().contains("\"ByteLevel\"")
}

/// Merges as pairs, from either serialisation (`["a", "b"]` or `"a b"`).
pub fn merges_of(model: &Value) -> Vec<(String, String)> {
    model["merges"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter_map(|m| match m {
                    Value::Array(pair) if pair.len() == 2 => {
                        Some((pair[0].as_str()?.to_string(), pair[1].as_str()?.to_string()))
                    }
                    Value::String(s) => s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every token of a tokenizer.json by id: the model's vocabulary and the
/// added tokens, `[PAD{i}]` for an id neither names (as GGUF export writes).
pub fn tokens_by_id(tokenizer: &Value) -> Vec<String> {
    let mut by_id: std::collections::BTreeMap<u64, String> = tokenizer["model"]["vocab"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(t, id)| Some((id.as_u64()?, t.clone())))
        .collect();
    for t in tokenizer["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(id), Some(content)) = (t["id"].as_u64(), t["content"].as_str()) {
            by_id.insert(id, content.to_string());
        }
    }
    let n = by_id.keys().next_back().map_or(0, |&m| m + 1);
    (0..n)
        .map(|i| by_id.get(&i).cloned().unwrap_or_else(|| format!("[PAD{i}]")))
        .collect()
}

/// Each token's score: minus (1 + the rank of the first merge that makes
/// it), 0 for a token no merge makes (characters, bytes, specials).
pub fn scores_from_merges(tokens: &[String], merges: &[(String, String)]) -> Vec<f64> {
    let mut rank: HashMap<String, usize> = HashMap::new();
    for (r, (l, rt)) in merges.iter().enumerate() {
        rank.entry(format!("{l}{rt}")).or_insert(r);
    }
    tokens
        .iter()
        .map(|t| rank.get(t).map_or(0.0, |&r| -(r as f64) - 1.0))
        .collect()
}

/// transformers' `generate_merges`: every split of a token into two
/// tokens, best score first (ties: longer left piece, then longer right).
pub fn merges_from_scores(tokens: &[String], scores: &[f64]) -> Vec<(String, String)> {
    let vocab: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let mut merges: Vec<(String, String, f64)> = Vec::new();
    for (token, &score) in tokens.iter().zip(scores) {
        let mut local: Vec<(&str, &str)> = token
            .char_indices()
            .skip(1)
            .map(|(i, _)| (&token[..i], &token[i..]))
            .filter(|(l, r)| vocab.contains_key(l) && vocab.contains_key(r))
            .collect();
        local.sort_by_key(|(l, r)| (vocab[l], vocab[r]));
        merges.extend(local.into_iter().map(|(l, r)| (l.to_string(), r.to_string(), score)));
    }
    let key = |m: &(String, String, f64)| (m.2, m.0.chars().count(), m.1.chars().count());
    merges.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0).then(kb.1.cmp(&ka.1)).then(kb.2.cmp(&ka.2))
    });
    merges.into_iter().map(|(l, r, _)| (l, r)).collect()
}

/// The closed merge list of `merges` over `tokens`: the fixed point of
/// scores → merges → scores (at most three rounds: the second groups the
/// splits of tokens no merge made; the third changes nothing).
pub fn close(tokens: &[String], merges: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut current = merges;
    for _ in 0..4 {
        let next = merges_from_scores(tokens, &scores_from_merges(tokens, &current));
        if next == current {
            break;
        }
        current = next;
    }
    current
}

/// Closes the merge list of a tokenizer.json in place (see [`close`]).
pub fn close_merges_of(tokenizer: &mut Value) {
    let tokens = tokens_by_id(tokenizer);
    let merges = close(&tokens, merges_of(&tokenizer["model"]));
    tokenizer["model"]["merges"] = Value::Array(
        merges
            .into_iter()
            .map(|(a, b)| Value::Array(vec![Value::String(a), Value::String(b)]))
            .collect(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn merges_from_scores_follow_transformers_generate_merges() {
        // Pieces: a, b, c, ab, bc, abc; scores make `abc` best, then `ab`.
        let tokens = strings(&["a", "b", "c", "ab", "bc", "abc"]);
        let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -0.5];
        // abc (-0.5): longer left piece first: ("ab","c") before ("a","bc").
        assert_eq!(
            merges_from_scores(&tokens, &scores),
            pairs(&[("ab", "c"), ("a", "bc"), ("a", "b"), ("b", "c")])
        );
    }

    #[test]
    fn closing_adds_every_split_in_the_order_of_the_first_merge() {
        // BPE learnt ▁+n, then n+a, then ▁+na: `▁na` only from `▁`+`na`,
        // which `▁n` blocks. Closed, `▁n`+`a` makes it too.
        let tokens = strings(&["▁", "n", "a", "▁n", "na", "▁na"]);
        let learnt = pairs(&[("▁", "n"), ("n", "a"), ("▁", "na")]);
        let closed = close(&tokens, learnt);
        assert_eq!(closed, pairs(&[("▁", "n"), ("n", "a"), ("▁n", "a"), ("▁", "na")]));
        // A fixed point: through GGUF scores and back gives it again.
        assert_eq!(
            merges_from_scores(&tokens, &scores_from_merges(&tokens, &closed)),
            closed
        );
    }

    #[test]
    fn tokens_by_id_fill_holes_and_take_added_tokens() {
        let tok: Value = serde_json::json!({
            "model": {"vocab": {"a": 0, "b": 2}},
            "added_tokens": [{"id": 3, "content": "<s>"}]
        });
        assert_eq!(tokens_by_id(&tok), strings(&["a", "[PAD1]", "b", "<s>"]));
    }
}
