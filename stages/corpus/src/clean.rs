//! Text clean-up steps: Unicode normalisation and whitespace / control
//! character clean-up. Each is optional; the ingest stage counts what they do.

use unicode_normalization::{IsNormalized, UnicodeNormalization};

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
            // Most text is already normalised; the quick check avoids a
            // copy-by-char for it.
            Normalization::Nfc => match unicode_normalization::is_nfc_quick(text.chars()) {
                IsNormalized::Yes => text.to_string(),
                _ => text.nfc().collect(),
            },
            Normalization::Nfkc => match unicode_normalization::is_nfkc_quick(text.chars()) {
                IsNormalized::Yes => text.to_string(),
                _ => text.nfkc().collect(),
            },
        }
    }
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

    #[test]
    fn nfkc_folds_compatibility_forms() {
        assert_eq!(Normalization::Nfkc.apply("ｆｕｌｌ"), "full");
        assert_eq!(Normalization::Nfc.apply("e\u{301}"), "é");
        assert_eq!(Normalization::None.apply("e\u{301}"), "e\u{301}");
    }
}
