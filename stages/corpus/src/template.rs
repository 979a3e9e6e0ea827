//! Instruction templates: how an (instruction, input) pair becomes the
//! prompt the model continues with the response. The named ones are the
//! formats the study's instruction sets were trained with.

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Template {
    /// Stanford Alpaca's prompt, with or without the `### Input:` block.
    Alpaca,
    /// Bactrian-X: `### Input:\n{instruction}\n\n{input}\n\n### Output:\n`.
    Bactrian,
    /// BELLE: `Human: {input}\n\nAssistant:` (the instruction and its input
    /// together as the human turn).
    Belle,
    /// A user's own string with `{instruction}` and/or `{input}`.
    Custom(String),
    /// The model's own chat template (tokenizer_config.json), rendered by
    /// `babelflow_tokens::chat`; `prompt` gives only the user's turn.
    Chat,
}

pub const NAMES: &[&str] = &["alpaca", "bactrian", "belle", "chat"];

#[derive(Debug, Clone, PartialEq)]
pub struct TemplateError(String);

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Template {
    pub fn parse(spec: &str) -> Result<Self, TemplateError> {
        match spec {
            "alpaca" => Ok(Template::Alpaca),
            "bactrian" => Ok(Template::Bactrian),
            "belle" => Ok(Template::Belle),
            "chat" => Ok(Template::Chat),
            custom if custom.contains("{instruction}") || custom.contains("{input}") => {
                Ok(Template::Custom(custom.to_string()))
            }
            other => Err(TemplateError(format!(
                "`{other}` is neither a template name ({}) nor a template string with {{instruction}} or {{input}}",
                NAMES.join(", ")
            ))),
        }
    }

    /// The prompt for one example; the response follows it directly.
    pub fn prompt(&self, instruction: &str, input: &str) -> String {
        let (instruction, input) = (instruction.trim(), input.trim());
        match self {
            Template::Alpaca if input.is_empty() => format!(
                "Below is an instruction that describes a task. Write a response that appropriately \
                 completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
            ),
            Template::Alpaca => format!(
                "Below is an instruction that describes a task, paired with an input that provides \
                 further context. Write a response that appropriately completes the request.\n\n\
                 ### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
            ),
            Template::Bactrian if input.is_empty() => format!("### Input:\n{instruction}\n\n### Output:\n"),
            Template::Bactrian => format!("### Input:\n{instruction}\n\n{input}\n\n### Output:\n"),
            Template::Belle if input.is_empty() => format!("Human: {instruction}\n\nAssistant:"),
            Template::Belle => format!("Human: {instruction}\n{input}\n\nAssistant:"),
            Template::Custom(t) => t.replace("{instruction}", instruction).replace("{input}", input),
            // The user's turn; the chat template adds the rest.
            Template::Chat if input.is_empty() => instruction.to_string(),
            Template::Chat => format!("{instruction}\n\n{input}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_templates_render_the_published_formats() {
        let b = Template::parse("bactrian").unwrap();
        assert_eq!(
            b.prompt("Translate", "jambo"),
            "### Input:\nTranslate\n\njambo\n\n### Output:\n"
        );
        assert_eq!(b.prompt("Hi?", ""), "### Input:\nHi?\n\n### Output:\n");
        assert_eq!(Template::Belle.prompt("写一首诗", ""), "Human: 写一首诗\n\nAssistant:");
        assert!(Template::Alpaca
            .prompt("Sum", "1 2")
            .ends_with("### Input:\n1 2\n\n### Response:\n"));
        let c = Template::parse("Q: {instruction} {input}\nA:").unwrap();
        assert_eq!(c.prompt("why", "sky"), "Q: why sky\nA:");
        let err = Template::parse("chatml").unwrap_err().to_string();
        assert!(err.contains("alpaca, bactrian, belle, chat"), "{err}");
    }
}
