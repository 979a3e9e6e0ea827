//! Code-switching in responses: does a response meant to be in the target
//! language slip into another one? Two signals, per sentence-like segment:
//! the script of its letters (Devanagari text with Latin sentences, Han with
//! Latin...), and, for segments in the target's own script, the language
//! identifier (an English sentence inside a Swahili answer). Reported as the
//! share of responses that mix languages and the share of letters in a
//! script other than the target's.

use babelflow_corpus::langid::{to_whatlang, LangId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Script {
    Latin,
    Cyrillic,
    Arabic,
    Devanagari,
    Bengali,
    Gujarati,
    Tamil,
    Telugu,
    Malayalam,
    Han,
    Kana,
    Hangul,
    Other,
}

/// The script of a letter; `None` for digits, punctuation, spaces, marks
/// that carry no language.
pub fn script_of(c: char) -> Option<Script> {
    if !c.is_alphabetic() {
        return None;
    }
    let s = match c as u32 {
        0x0041..=0x024F | 0x1E00..=0x1EFF => Script::Latin,
        0x0400..=0x04FF => Script::Cyrillic,
        0x0600..=0x06FF | 0x0750..=0x077F | 0xFB50..=0xFDFF | 0xFE70..=0xFEFF => Script::Arabic,
        0x0900..=0x097F => Script::Devanagari,
        0x0980..=0x09FF => Script::Bengali,
        0x0A80..=0x0AFF => Script::Gujarati,
        0x0B80..=0x0BFF => Script::Tamil,
        0x0C00..=0x0C7F => Script::Telugu,
        0x0D00..=0x0D7F => Script::Malayalam,
        0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF => Script::Han,
        0x3040..=0x30FF => Script::Kana,
        0xAC00..=0xD7AF => Script::Hangul,
        _ => Script::Other,
    };
    Some(s)
}

/// The script a language is written in (the study's 13 and a few more).
pub fn script_for(lang: &str) -> Option<Script> {
    Some(match lang {
        "en" | "sw" | "ny" | "vi" | "id" | "fr" | "de" | "es" | "pt" | "it" | "tr" => Script::Latin,
        "hi" | "mr" | "ne" => Script::Devanagari,
        "bn" => Script::Bengali,
        "gu" => Script::Gujarati,
        "ta" => Script::Tamil,
        "te" => Script::Telugu,
        "ml" => Script::Malayalam,
        "ar" | "ur" | "fa" => Script::Arabic,
        "zh" => Script::Han,
        "ru" | "uk" => Script::Cyrillic,
        "ja" => Script::Kana,
        "ko" => Script::Hangul,
        _ => return None,
    })
}

/// Sentence-like pieces: split after sentence ends of the scripts we know.
pub fn segments(text: &str) -> Vec<&str> {
    text.split_inclusive(['.', '!', '?', '\n', '।', '॥', '。', '！', '？', '؟', '۔'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Verdict {
    pub letters: usize,
    pub off_target_letters: usize,
    pub segments: usize,
    pub off_target_segments: usize,
}

impl Verdict {
    pub fn mixed(&self) -> bool {
        self.off_target_segments > 0
    }
}

pub struct Detector {
    langid: LangId,
    /// Segments shorter than this (in letters) are not given to the language
    /// identifier: a name or a loanword is not a switch.
    pub min_letters: usize,
    pub min_confidence: f64,
}

impl Default for Detector {
    fn default() -> Self {
        Detector {
            langid: LangId::default(),
            min_letters: 20,
            min_confidence: 0.5,
        }
    }
}

impl Detector {
    /// Judges `text`, meant to be in `lang`; `source` is the language the
    /// model was first trained in (what it usually slips back into).
    pub fn judge(&self, text: &str, lang: &str, source: &str) -> Verdict {
        let expected = script_for(lang);
        let known_target = to_whatlang(lang).is_some();
        let mut v = Verdict::default();
        for seg in segments(text) {
            let scripts: Vec<Script> = seg.chars().filter_map(script_of).collect();
            if scripts.is_empty() {
                continue;
            }
            v.segments += 1;
            v.letters += scripts.len();
            let off = match expected {
                Some(e) => scripts.iter().filter(|s| **s != e).count(),
                None => 0,
            };
            v.off_target_letters += off;
            let mostly_other_script = off * 2 > scripts.len();
            let other_language = !mostly_other_script && scripts.len() >= self.min_letters && {
                match self.langid.detect(seg) {
                    Some((found, confidence)) if confidence >= self.min_confidence && found != lang => {
                        // Where the identifier knows the target, any other
                        // language counts; where it does not (Swahili), only
                        // the source language is a sure sign.
                        known_target || found == source
                    }
                    _ => false,
                }
            };
            if mostly_other_script || other_language {
                v.off_target_segments += 1;
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planted_switches_are_found_in_four_scripts_and_pure_answers_pass() {
        let d = Detector::default();
        let english = "This is an English sentence about the weather and the market today.";
        let pure = [
            (
                "sw",
                "Kuhamisha mifugo kwenda sehemu za juu. Kuhifadhi mbegu na zana mahali pakavu.",
            ),
            ("hi", "हाथ धोना बीमारी से बचाता है। रोज़ सात घंटे सोना चाहिए।"),
            ("ar", "غسل اليدين يمنع المرض. النوم سبع ساعات مفيد."),
            ("zh", "饭前洗手可以预防疾病。成年人每天应该睡七个小时。"),
            (
                "vi",
                "Rửa tay trước khi ăn giúp phòng bệnh. Người lớn nên ngủ bảy tiếng mỗi đêm.",
            ),
        ];
        for (lang, text) in pure {
            let v = d.judge(text, lang, "en");
            assert!(!v.mixed(), "{lang}: {v:?}");
            assert_eq!(v.off_target_letters, 0, "{lang}");
        }
        for (lang, text) in pure {
            let planted = format!("{text} {english}");
            let v = d.judge(&planted, lang, "en");
            assert!(v.mixed(), "{lang} with an English sentence: {v:?}");
            if lang != "sw" && lang != "vi" {
                assert!(v.off_target_letters > 40, "{lang}: {v:?}");
            }
        }
        // A Latin-script name inside Hindi is neither a switch nor many letters.
        let v = d.judge("मेरा नाम Ravi है और मैं दिल्ली में रहता हूँ।", "hi", "en");
        assert!(!v.mixed(), "{v:?}");
        assert_eq!(v.off_target_letters, 4);
    }

    #[test]
    fn segments_split_at_the_scripts_sentence_ends() {
        assert_eq!(segments("एक। दो। three."), ["एक।", "दो।", "three."]);
        assert_eq!(segments("一。二！"), ["一。", "二！"]);
    }
}
