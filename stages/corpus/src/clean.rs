//! Text clean-up steps: Unicode normalisation and whitespace / control
//! character clean-up. Each is optional; the ingest stage counts what they do.

use unicode_normalization::char::canonical_combining_class;
use unicode_normalization::{is_nfc_quick, is_nfkc_quick, IsNormalized, UnicodeNormalization};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalization {
    None,
    Nfc,
    Nfkc,
}

impl Normalization {
    pub fn parse(s: &str) -> Normalization {
        match s {
            "nfc" => Normalization::Nfc,
            "nfkc" => Normalization::Nfkc,
            _ => Normalization::None,
        }
    }

    pub fn apply(self, text: &str) -> String {
        match self {
            Normalization::None => text.to_string(),
            // ASCII is unchanged by every normal form.
            _ if text.is_ascii() => text.to_string(),
            Normalization::Nfc if is_normalized(text, |c| is_nfc_quick(std::iter::once(c)), |s| s.nfc()) => {
                text.to_string()
            }
            Normalization::Nfc => text.nfc().collect(),
            Normalization::Nfkc if is_normalized(text, |c| is_nfkc_quick(std::iter::once(c)), |s| s.nfkc()) => {
                text.to_string()
            }
            Normalization::Nfkc => text.nfkc().collect(),
        }
    }
}

/// Whether `text` is already in the normal form whose per-character quick
/// check is `quick` and whose full normaliser is `normalize`.
///
/// Most text is; the quick check (UAX #15 §9) proves it for most, but
/// answers "maybe" for characters that could combine with what precedes
/// them — vowel signs of most Indic scripts among them — and normalising a
/// whole document to settle that was a third of ingest time. Composition
/// cannot cross a character that is a starter (ccc 0) with quick check
/// "yes", so only the segments between such boundaries that hold a "maybe"
/// character are normalised and compared.
fn is_normalized<'a, N: Iterator<Item = char> + 'a>(
    text: &'a str,
    quick: impl Fn(char) -> IsNormalized,
    normalize: impl Fn(&'a str) -> N,
) -> bool {
    let mut segment_start = 0;
    let mut segment_has_maybe = false;
    let mut last_class = 0u8;
    let segment_unchanged = |segment: &'a str| segment.chars().eq(normalize(segment));
    // A text uses few distinct characters: remember their properties in a
    // small direct-mapped table instead of looking them up for every one.
    const YES: u8 = 0;
    const MAYBE: u8 = 1;
    const NO: u8 = 2;
    let mut known = [(u32::MAX, 0u8, YES); 256];
    for (i, c) in text.char_indices() {
        let slot = &mut known[c as usize & 0xff];
        if slot.0 != c as u32 {
            let answer = match quick(c) {
                IsNormalized::Yes => YES,
                IsNormalized::Maybe => MAYBE,
                IsNormalized::No => NO,
            };
            *slot = (c as u32, canonical_combining_class(c), answer);
        }
        let (_, class, answer) = *slot;
        if class != 0 && class < last_class {
            return false; // marks out of canonical order
        }
        last_class = class;
        match answer {
            NO => return false,
            MAYBE => segment_has_maybe = true,
            _ if class == 0 => {
                if segment_has_maybe && !segment_unchanged(&text[segment_start..i]) {
                    return false;
                }
                segment_start = i;
                segment_has_maybe = false;
            }
            _ => {}
        }
    }
    !segment_has_maybe || segment_unchanged(&text[segment_start..])
}

/// Drops control characters (keeping newlines and tabs), turns other Unicode
/// spaces into plain spaces, collapses runs of spaces, trims line ends and
/// keeps at most one blank line between paragraphs.
pub fn clean_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    let mut newlines = 0usize;
    // Runs of ordinary characters are copied as slices: the per-character
    // work is only deciding what is ordinary.
    let mut run_start: Option<usize> = None;
    for (i, c) in text.char_indices() {
        // Zero-width joiners are format characters that matter in Indic and
        // Arabic scripts: they count as ordinary and are kept.
        let separator = may_separate(c) && (c.is_whitespace() || c.is_control() || is_invisible_format(c));
        if !separator {
            if run_start.is_none() {
                separate(&mut out, &mut pending_space, &mut newlines);
                run_start = Some(i);
            }
            continue;
        }
        if let Some(start) = run_start.take() {
            out.push_str(&text[start..i]);
        }
        match c {
            '\n' => {
                pending_space = false;
                newlines += 1;
            }
            '\r' => {}
            c if c.is_whitespace() => pending_space = true,
            _ => {} // control or invisible formatting: dropped
        }
    }
    if let Some(start) = run_start {
        out.push_str(&text[start..]);
    }
    out
}

/// Writes what separates the text so far from the next ordinary character.
fn separate(out: &mut String, pending_space: &mut bool, newlines: &mut usize) {
    if !out.is_empty() {
        if *newlines > 0 {
            out.push_str(if *newlines > 1 { "\n\n" } else { "\n" });
        } else if *pending_space {
            out.push(' ');
        }
    }
    *newlines = 0;
    *pending_space = false;
}

/// False for characters that are certainly ordinary: every Unicode space,
/// control and invisible format character this module drops lies in these
/// ranges, so most text (all of the Indic, Arabic and CJK blocks) skips the
/// property tables.
fn may_separate(c: char) -> bool {
    matches!(c as u32, 0..=0x7f | 0x80..=0xad | 0x1680 | 0x2000..=0x206f | 0x3000 | 0xfeff)
}

/// Byte-order marks and other invisible formatting characters that carry no text.
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{feff}' | '\u{200b}' | '\u{2060}' | '\u{00ad}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_is_collapsed_and_controls_dropped() {
        assert_eq!(
            clean_whitespace("  a\u{0007}b \t c  \n\n\n\nd\u{feff}e \n"),
            "ab c\n\nde"
        );
        assert_eq!(clean_whitespace("क्‍ष"), "क्‍ष");
        assert_eq!(clean_whitespace("\u{feff}  x\r\n\ty \u{a0}z\n"), "x\ny z");
        assert_eq!(clean_whitespace("plain text stays"), "plain text stays");
    }

    /// The range pre-check loses nothing: over all of Unicode, whatever
    /// the property tables call a separator is inside the checked ranges.
    #[test]
    fn every_separator_is_in_the_checked_ranges() {
        for c in (0..=0x10ffffu32).filter_map(char::from_u32) {
            if c.is_whitespace() || c.is_control() || is_invisible_format(c) {
                assert!(may_separate(c), "U+{:04X}", c as u32);
            }
        }
    }

    /// The segment-wise check agrees with normalising the whole text: on
    /// every sample paragraph, and on 200,000 random strings built from
    /// starters and marks that compose, reorder or block each other.
    #[test]
    fn the_segment_check_agrees_with_full_normalisation() {
        let root = babelflow_stage::testing::package_dir().join("../../data/samples/text");
        let mut texts: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .flat_map(|e| {
                let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
                text.split("\n\n").map(str::to_string).collect::<Vec<_>>()
            })
            .collect();
        let pool: Vec<char> = "aeoAE \u{301}\u{300}\u{323}\u{308}\u{327}\u{1100}\u{1161}\u{11a8}\u{ac00}\
                               \u{928}\u{93c}\u{929}\u{915}\u{94d}\u{9c7}\u{9be}\u{9d7}\u{b92}\u{bd7}\u{bc6}\u{bbe}\
                               \u{d46}\u{d3e}\u{cbf}\u{cd5}\u{fb01}\u{2126}\u{212b}\u{e9}\u{1e0d}\u{340}\u{f43}\u{591}\u{5b0}\u{5d0}"
            .chars()
            .collect();
        let mut state = 7u64;
        for _ in 0..200_000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = 1 + (state >> 60) as usize;
            texts.push(
                (0..len)
                    .map(|k| pool[((state >> (4 * k % 56)) as usize ^ (k * 7)) % pool.len()])
                    .collect(),
            );
        }
        for t in &texts {
            for form in [Normalization::Nfc, Normalization::Nfkc] {
                let full: String = match form {
                    Normalization::Nfc => t.nfc().collect(),
                    _ => t.nfkc().collect(),
                };
                assert_eq!(form.apply(t), full, "{form:?} of {:?}", t.escape_unicode().to_string());
            }
        }
    }

    #[test]
    fn nfkc_folds_compatibility_forms() {
        assert_eq!(Normalization::Nfkc.apply("ｆｕｌｌ"), "full");
        assert_eq!(Normalization::Nfc.apply("e\u{301}"), "é");
        assert_eq!(Normalization::None.apply("e\u{301}"), "e\u{301}");
    }
}
