//! Text clean-up steps: Unicode normalisation and whitespace / control
//! character clean-up. Each is optional; the ingest stage counts what they do.

use unicode_normalization::UnicodeNormalization;

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
            // Most text is already NFC; the quick check avoids a copy-by-char.
            Normalization::Nfc => match unicode_normalization::is_nfc_quick(text.chars()) {
                unicode_normalization::IsNormalized::Yes => text.to_string(),
                _ => text.nfc().collect(),
            },
            Normalization::Nfkc => match unicode_normalization::is_nfkc_quick(text.chars()) {
                unicode_normalization::IsNormalized::Yes => text.to_string(),
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
    for c in text.chars() {
        match c {
            '\n' => {
                pending_space = false;
                newlines += 1;
            }
            '\r' => {}
            // Zero-width joiners matter in Indic and Arabic scripts: keep them.
            '\u{200c}' | '\u{200d}' => flush_then_push(&mut out, &mut pending_space, &mut newlines, c),
            c if c == '\t' || c.is_whitespace() => pending_space = true,
            c if c.is_control() || is_invisible_format(c) => {}
            c => flush_then_push(&mut out, &mut pending_space, &mut newlines, c),
        }
    }
    out
}

fn flush_then_push(out: &mut String, pending_space: &mut bool, newlines: &mut usize, c: char) {
    if !out.is_empty() {
        if *newlines > 0 {
            out.push_str(if *newlines > 1 { "\n\n" } else { "\n" });
        } else if *pending_space {
            out.push(' ');
        }
    }
    *newlines = 0;
    *pending_space = false;
    out.push(c);
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
    }

    #[test]
    fn nfkc_folds_compatibility_forms() {
        assert_eq!(Normalization::Nfkc.apply("ｆｕｌｌ"), "full");
        assert_eq!(Normalization::Nfc.apply("e\u{301}"), "é");
        assert_eq!(Normalization::None.apply("e\u{301}"), "e\u{301}");
    }
}
