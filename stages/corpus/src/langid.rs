//! Language identification with whatlang (trigram models + script detection).
//!
//! Of the study's 13 languages plus English and Chinese, whatlang knows 14:
//! ar bn gu hi id ml mr ne ta te ur vi en zh. It has no Swahili model, so
//! `langid` with `lang: sw` is refused at validation rather than guessed.
//! Languages that share a script are the ones it confuses on short text:
//! hi / mr / ne (Devanagari), ar / ur / fa (Arabic script), id / ms.

use whatlang::{Detector, Lang};

/// ISO 639-1 codes used in recipes → whatlang's languages.
const CODES: &[(&str, Lang)] = &[
    ("ar", Lang::Ara),
    ("bn", Lang::Ben),
    ("gu", Lang::Guj),
    ("hi", Lang::Hin),
    ("id", Lang::Ind),
    ("ml", Lang::Mal),
    ("mr", Lang::Mar),
    ("ne", Lang::Nep),
    ("ta", Lang::Tam),
    ("te", Lang::Tel),
    ("ur", Lang::Urd),
    ("vi", Lang::Vie),
    ("en", Lang::Eng),
    ("zh", Lang::Cmn),
    ("fa", Lang::Pes),
    ("ja", Lang::Jpn),
    ("ko", Lang::Kor),
    ("ru", Lang::Rus),
    ("es", Lang::Spa),
    ("fr", Lang::Fra),
    ("de", Lang::Deu),
    ("pt", Lang::Por),
    ("th", Lang::Tha),
];

pub fn to_whatlang(code: &str) -> Option<Lang> {
    CODES
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, l)| *l)
        .or_else(|| Lang::from_code(code))
}

pub fn to_code(lang: Lang) -> &'static str {
    CODES
        .iter()
        .find(|(_, l)| *l == lang)
        .map(|(c, _)| *c)
        .unwrap_or_else(|| lang.code())
}

pub struct LangId {
    detector: Detector,
}

impl Default for LangId {
    fn default() -> Self {
        LangId {
            detector: Detector::new(),
        }
    }
}

impl LangId {
    /// (ISO code, confidence 0–1), or `None` when no language is detectable.
    pub fn detect(&self, text: &str) -> Option<(&'static str, f64)> {
        self.detector
            .detect(text)
            .map(|info| (to_code(info.lang()), info.confidence()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_the_study_languages_except_swahili() {
        for code in [
            "ar", "bn", "gu", "hi", "id", "ml", "mr", "ne", "ta", "te", "ur", "vi", "en", "zh",
        ] {
            assert!(to_whatlang(code).is_some(), "{code}");
        }
        assert!(to_whatlang("sw").is_none());
    }

    #[test]
    fn tells_scripts_apart() {
        let id = LangId::default();
        assert_eq!(
            id.detect("这是一个关于语言模型的简短中文句子，用来测试语言识别。")
                .map(|d| d.0),
            Some("zh")
        );
        assert_eq!(
            id.detect("The quick brown fox jumps over the lazy dog while the farmer watches.")
                .map(|d| d.0),
            Some("en")
        );
    }
}
