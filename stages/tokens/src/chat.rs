//! A model's own chat template (`tokenizer_config.json`'s Jinja
//! `chat_template`), rendered with minijinja the way transformers'
//! `apply_chat_template` renders it: `trim_blocks` and `lstrip_blocks` on,
//! `messages`, `add_generation_prompt`, `bos_token`, `eos_token`,
//! `raise_exception`, Python's string methods (minijinja-contrib's
//! `pycompat`, as HF's own Rust servers use). `strftime_now` returns a fixed
//! date (26 Jul 2024, the default of LLaMA-3.1's template) so a rendering,
//! hence a training example, never depends on the day it ran.
//!
//! The rendered text is tokenized as transformers does for chat
//! (`add_special_tokens=False`: the template writes its own BOS if it wants
//! one). For training, each assistant turn is found as the text the turn
//! adds after the generation prompt of the conversation before it; a
//! template for which that does not hold (it rewrites earlier turns) is
//! refused rather than guessed at.

use std::ops::Range;

use minijinja::{Environment, Error, ErrorKind, Value};

use crate::hf::LoadedTokenizer;
use crate::specials::Specials;

/// One turn: `system`, `user` or `assistant`, and its text.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

/// A conversation ready to train on: ids, and per target position
/// (predicting `ids[j + 1]`) whether it is part of an assistant turn.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatExample {
    pub ids: Vec<u32>,
    pub weights: Vec<f32>,
}

impl ChatTemplate {
    pub fn new(source: &str, specials: &Specials) -> Result<ChatTemplate, String> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| e.to_string())?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_function("strftime_now", |format: String| -> String {
            match format.as_str() {
                "%Y-%m-%d" => "2024-07-26".into(),
                _ => "26 Jul 2024".into(),
            }
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| format!("the chat template does not parse: {e}"))?;
        Ok(ChatTemplate {
            env,
            bos: specials.bos.as_ref().map(|t| t.text.clone()).unwrap_or_default(),
            eos: specials.eos.as_ref().map(|t| t.text.clone()).unwrap_or_default(),
        })
    }

    /// The model's own template, for `template: chat`; an error naming the
    /// model (`what`) when its files have none.
    pub fn of_model(specials: &Specials, what: &str) -> Result<ChatTemplate, babelflow_stage::StageError> {
        let source = specials.chat_template.as_deref().ok_or_else(|| {
            babelflow_stage::StageError::failed(format!(
                "`template: chat` needs the model's chat template, and {what} has none (no `chat_template` in \
                 tokenizer_config.json, no chat_template.jinja); use the template it was tuned with (alpaca, \
                 bactrian, belle, or your own)"
            ))
        })?;
        ChatTemplate::new(source, specials).map_err(babelflow_stage::StageError::failed)
    }

    /// The template's text for `messages`; with `add_generation_prompt`,
    /// ending where the assistant's answer begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, String> {
        let template = self.env.get_template("chat").map_err(|e| e.to_string())?;
        template
            .render(minijinja::context! {
                messages => minijinja::value::Serde(messages),
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos,
                eos_token => &self.eos,
            })
            .map_err(|e| format!("rendering the chat template: {e:#}"))
    }

    /// The whole conversation's text and the byte ranges of its assistant
    /// turns (each with what the template closes the turn with, e.g.
    /// `<|im_end|>`).
    pub fn conversation(&self, messages: &[Message]) -> Result<(String, Vec<Range<usize>>), String> {
        let full = self.render(messages, false)?;
        let mut spans = Vec::new();
        for (k, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let before = self.render(&messages[..k], true)?;
            let through = self.render(&messages[..=k], false)?;
            if !through.starts_with(&before) || !full.starts_with(&through) {
                return Err(format!(
                    "the chat template does not render turn {} as an extension of the turns before it, so the \
                     assistant's part cannot be told apart; use a text template (alpaca, bactrian, belle, or your own)",
                    k + 1
                ));
            }
            spans.push(before.len()..through.len());
        }
        Ok((full, spans))
    }

    /// Ids of a conversation and, per target, whether it is the assistant's.
    pub fn encode(&self, tok: &LoadedTokenizer, messages: &[Message]) -> Result<ChatExample, String> {
        let (text, spans) = self.conversation(messages)?;
        let encoding = tok.tokenizer.encode(text.as_str(), false).map_err(|e| e.to_string())?;
        let ids = encoding.get_ids().to_vec();
        let in_answer = |(start, _end): (usize, usize)| spans.iter().any(|s| s.contains(&start));
        let weights = encoding
            .get_offsets()
            .iter()
            .skip(1)
            .map(|&o| if in_answer(o) { 1.0 } else { 0.0 })
            .collect();
        Ok(ChatExample { ids, weights })
    }

    /// The token the template closes an assistant turn with (`<|im_end|>`,
    /// `<|eot_id|>`, `</s>`), if it is a single special token: generation
    /// stops there.
    pub fn end_of_turn(&self, tok: &LoadedTokenizer) -> Option<u32> {
        const MARK: &str = "\u{2063}answer\u{2063}";
        let text = self
            .render(&[Message::new("user", "?"), Message::new("assistant", MARK)], false)
            .ok()?;
        let after = &text[text.find(MARK)? + MARK.len()..];
        let ids = tok.tokenizer.encode(after, false).ok()?.get_ids().to_vec();
        let first = *ids.first()?;
        let special = tok
            .tokenizer
            .get_added_tokens_decoder()
            .get(&first)
            .is_some_and(|t| t.special);
        special.then_some(first)
    }
}

/// The turns of one instruction row: its conversation when it has one,
/// else the instruction (and input) as the user's turn and the output as
/// the assistant's.
pub fn messages_of(instruction: &str, input: &str, output: Option<&str>, turns: &[Message]) -> Vec<Message> {
    if !turns.is_empty() {
        return turns.to_vec();
    }
    let user = if input.trim().is_empty() {
        instruction.trim().to_string()
    } else {
        format!("{}\n\n{}", instruction.trim(), input.trim())
    };
    let mut out = vec![Message::new("user", &user)];
    if let Some(answer) = output {
        out.push(Message::new("assistant", answer.trim()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2's template (ChatML with a default system turn).
    pub const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn specials() -> Specials {
        Specials {
            bos: None,
            eos: None,
            pad: None,
            unk: None,
            add_bos: false,
            add_eos: false,
            stop: Vec::new(),
            chat_template: Some(SMOLLM2.into()),
            sources: Default::default(),
        }
    }

    #[test]
    fn renders_as_transformers_does() {
        let t = ChatTemplate::new(SMOLLM2, &specials()).unwrap();
        let text = t.render(&[Message::new("user", "Habari?")], true).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nHabari?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn assistant_spans_cover_each_answer_and_its_end_of_turn() {
        let t = ChatTemplate::new(SMOLLM2, &specials()).unwrap();
        let turns = [
            Message::new("user", "a"),
            Message::new("assistant", "B"),
            Message::new("user", "c"),
            Message::new("assistant", "D"),
        ];
        let (text, spans) = t.conversation(&turns).unwrap();
        let parts: Vec<&str> = spans.iter().map(|s| &text[s.clone()]).collect();
        assert_eq!(parts, ["B<|im_end|>\n", "D<|im_end|>\n"]);
    }

    #[test]
    fn python_string_methods_and_raise_exception_work() {
        let src = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system turns') }}{% endif %}\
                   {{ messages[0]['content'].strip().upper() }}";
        let t = ChatTemplate::new(src, &specials()).unwrap();
        assert_eq!(t.render(&[Message::new("user", "  hi  ")], false).unwrap(), "HI");
        let err = t.render(&[Message::new("system", "x")], false).unwrap_err();
        assert!(err.contains("no system turns"), "{err}");
    }

    #[test]
    fn a_template_that_rewrites_earlier_turns_is_refused() {
        // Drops every assistant turn but the last (as some reasoning templates do).
        let src = "{% for m in messages %}{% if m['role'] == 'user' or loop.last %}[{{ m['content'] }}]{% endif %}{% endfor %}";
        let t = ChatTemplate::new(src, &specials()).unwrap();
        let turns = [
            Message::new("user", "a"),
            Message::new("assistant", "B"),
            Message::new("user", "c"),
            Message::new("assistant", "D"),
        ];
        let err = t.conversation(&turns).unwrap_err();
        assert!(err.contains("does not render turn 2 as an extension"), "{err}");
    }
}
