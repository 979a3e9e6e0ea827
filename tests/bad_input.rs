//! The bad-input catalogue, part 1: mistakes a user types or saves, each
//! refused by `plan` before anything runs, at the place to fix, with a
//! message that says what is wrong. One row per mistake: what the user
//! did, the exit code, where the error points, what it says, and what it
//! must not say (a second, wrong error).
//!
//! The mistakes found while something runs (a diverging step, an echoed
//! API key, a damaged artifact...) are in `bad_input_runs.rs`.

mod common;

use common::Project;

/// A recipe that validates: text ingested per language, a tokenizer, a
/// model from it, pretraining on one language's tokens.
const BASE: &str = r#"name: bad
vars:
  langs: [en, sw]
stages:
  corpus:
    kind: ingest
    foreach: ${vars.langs}
    needs: { files: "text/${item}.txt" }
    with: { lang: "${item}" }
  tokenizer:
    kind: train-tokenizer
    needs: { corpus: corpus }
    with: { vocab_size: 300 }
  tokens:
    kind: tokenize
    needs: { corpus: "corpus@en", tokenizer: tokenizer }
  model:
    kind: init-model
    needs: { tokenizer: tokenizer }
    with: { hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2 }
  train:
    kind: pretrain
    needs: { model: model, tokens: tokens }
    with: { steps: 2, lr: 1.0e-3 }
"#;

/// What the user saved as `r.yaml`.
enum Recipe {
    Base,
    /// BASE with one piece of text replaced.
    Edit(&'static str, &'static str),
    /// Raw bytes before BASE (a byte-order mark, a Latin-1 comment).
    Prefix(&'static [u8]),
}

struct Case {
    mistake: &'static str,
    recipe: Recipe,
    args: &'static [&'static str],
    exit: i32,
    /// `r.yaml:L:C` or `--set #N`; empty when the run must pass.
    at: &'static str,
    says: &'static str,
    /// Text that must not appear: a second, misleading error.
    not: &'static str,
}

const CASES: &[Case] = &[
    Case {
        mistake: "--set names an instance the stage does not make",
        recipe: Recipe::Base,
        args: &["--set", "stages.corpus@xx.with.min_chars=2"],
        exit: 2,
        at: "--set #1",
        says: "stage `corpus` has no instance `corpus@xx`",
        not: "",
    },
    Case {
        mistake: "--set misspells a variable",
        recipe: Recipe::Base,
        args: &["--set", "vars.lang=[sw]"],
        exit: 2,
        at: "--set #1",
        says: "the recipe has no variable `lang`\n  = help: did you mean `langs`?",
        not: "",
    },
    Case {
        mistake: "--set names a stage the recipe does not have",
        recipe: Recipe::Base,
        args: &["--set", "stages.nope.with.x=1"],
        exit: 2,
        at: "--set #1",
        says: "the recipe has no stage `nope`",
        not: "",
    },
    Case {
        mistake: "--set names a key a stage cannot have",
        recipe: Recipe::Base,
        args: &["--set", "stages.train.whith.lr=1"],
        exit: 2,
        at: "--set #1",
        says: "a stage has no key `whith`\n  = help: did you mean `with`?",
        not: "",
    },
    Case {
        mistake: "--set targets an instance of a stage without foreach",
        recipe: Recipe::Base,
        args: &["--set", "stages.train@x.with.steps=3"],
        exit: 2,
        at: "--set #1",
        says: "stage `train` has no instance `train@x`\n  = help: `train` has no foreach or matrix",
        not: "",
    },
    Case {
        mistake: "--set goes inside a list",
        recipe: Recipe::Base,
        args: &["--set", "vars.langs.first=sw"],
        exit: 2,
        at: "--set #1",
        says: "`vars.langs` is a list, not a mapping: set it whole",
        not: "",
    },
    Case {
        mistake: "--set a negative learning rate",
        recipe: Recipe::Base,
        args: &["--set", "stages.train.with.lr=-1"],
        exit: 2,
        at: "--set #1",
        says: "parameter `lr` of kind `pretrain`: must be above 0, found -1",
        not: "",
    },
    Case {
        mistake: "a negative learning rate in the recipe",
        recipe: Recipe::Edit("lr: 1.0e-3", "lr: -3.0e-4"),
        args: &[],
        exit: 2,
        at: "r.yaml:24:27",
        says: "parameter `lr` of kind `pretrain`: must be above 0, found -0.0003",
        not: "",
    },
    Case {
        mistake: "a number as words",
        recipe: Recipe::Edit("steps: 2", "steps: \"many\""),
        args: &[],
        exit: 2,
        at: "r.yaml:24:20",
        says: "parameter `steps` of kind `pretrain`: expected an integer, found the string \"many\"",
        not: "needs parameter `steps`",
    },
    Case {
        mistake: "a backend this build does not have",
        recipe: Recipe::Edit("    with: { steps: 2", "    backend: cuda\n    with: { steps: 2"),
        args: &[],
        exit: 2,
        at: "r.yaml:24:14",
        says: "this babelflow was built without the `cuda` backend",
        not: "",
    },
    Case {
        mistake: "a tab in the indentation",
        recipe: Recipe::Edit("    with: { steps: 2", "\twith: { steps: 2"),
        args: &[],
        exit: 2,
        at: "r.yaml:24:1",
        says: "malformed YAML: a tab, where YAML indents with spaces only",
        not: "",
    },
    Case {
        mistake: "a recipe saved in Latin-1",
        recipe: Recipe::Prefix(b"# caf\xe9\n"),
        args: &[],
        exit: 2,
        at: "r.yaml:1:6",
        says: "the recipe is not UTF-8: byte 0xE9 at byte offset 5",
        not: "",
    },
    Case {
        mistake: "a recipe saved with a byte-order mark",
        recipe: Recipe::Prefix("\u{feff}".as_bytes()),
        args: &[],
        exit: 0,
        at: "",
        says: "",
        not: "unknown key",
    },
    Case {
        mistake: "a misspelt executor",
        recipe: Recipe::Edit("stages:\n", "executor: { kind: slrum }\nstages:\n"),
        args: &[],
        exit: 2,
        at: "r.yaml:4:19",
        says: "`executor.kind` must be one of local, slurm, found \"slrum\"",
        not: "",
    },
    Case {
        mistake: "a memory amount Slurm cannot read",
        recipe: Recipe::Edit(
            "    with: { steps: 2",
            "    resources: { memory: lots }\n    with: { steps: 2",
        ),
        args: &[],
        exit: 2,
        at: "r.yaml:24:26",
        says: "`resources.memory` must be an amount like 8G, 512M or 16000 (megabytes)",
        not: "",
    },
    Case {
        mistake: "a time limit in the wrong form, given on the command line",
        recipe: Recipe::Base,
        args: &["--set", "stages.train.resources={time: \"2h\"}"],
        exit: 2,
        at: "--set #1",
        says: "`resources.time` must be a Slurm time limit like 90 (minutes), 2:00:00 or 1-12:00:00",
        not: "",
    },
    Case {
        mistake: "retries as a word",
        recipe: Recipe::Edit("    with: { steps: 2", "    retries: twice\n    with: { steps: 2"),
        args: &[],
        exit: 2,
        at: "r.yaml:24:14",
        says: "`retries` must be a whole number from 0 to 100",
        not: "",
    },
    Case {
        mistake: "several processes for a stage that runs in one",
        recipe: Recipe::Edit(
            "    needs: { corpus: \"corpus@en\", tokenizer: tokenizer }\n",
            "    needs: { corpus: \"corpus@en\", tokenizer: tokenizer }\n    resources: { tasks_per_node: 2 }\n",
        ),
        args: &[],
        exit: 2,
        at: "r.yaml:17:16",
        says: "`tokenize` runs in one process: `resources.nodes` and `resources.tasks_per_node` are for the data-parallel kinds (pretrain, sft)",
        not: "",
    },
    Case {
        mistake: "no processes per machine",
        recipe: Recipe::Base,
        args: &["--set", "stages.train.resources={tasks_per_node: 0}"],
        exit: 2,
        at: "--set #1",
        says: "`resources.tasks_per_node` must be a positive number of processes per machine",
        not: "",
    },
    Case {
        mistake: "a PMI plugin srun does not have",
        recipe: Recipe::Edit("stages:\n", "executor: { mpi: pmi3 }\nstages:\n"),
        args: &[],
        exit: 2,
        at: "r.yaml:4:18",
        says: "`executor.mpi` must be one of pmix, pmi2, pmix_v4, pmix_v5, cray_shasta, found \"pmi3\"",
        not: "",
    },
    Case {
        mistake: "a device that is neither a number nor the local rank's",
        recipe: Recipe::Edit("    with: { steps: 2", "    device: mine\n    with: { steps: 2"),
        args: &[],
        exit: 2,
        at: "r.yaml:24:13",
        says: "`device` must be a device number or `local` (the local rank's), found \"mine\"",
        not: "",
    },
    Case {
        mistake: "--set names an executor key that does not exist",
        recipe: Recipe::Base,
        args: &["--set", "executor.partiton=gpu"],
        exit: 2,
        at: "--set #1",
        says: "`executor` has no key `partiton`\n  = help: did you mean `partition`?",
        not: "",
    },
];

fn write_case(p: &Project, recipe: &Recipe) {
    p.write("text/en.txt", "Some English text.\n");
    p.write("text/sw.txt", "Maandishi ya Kiswahili.\n");
    let bytes: Vec<u8> = match recipe {
        Recipe::Base => BASE.into(),
        Recipe::Edit(from, to) => {
            assert!(BASE.contains(from), "{from:?} is not in the base recipe");
            BASE.replacen(from, to, 1).into()
        }
        Recipe::Prefix(prefix) => [prefix, BASE.as_bytes()].concat(),
    };
    std::fs::write(p.path("r.yaml"), bytes).unwrap();
}

#[test]
fn every_mistake_is_refused_before_anything_runs_at_its_place() {
    let mut failures = Vec::new();
    for case in CASES {
        let p = Project::new();
        write_case(&p, &case.recipe);
        let mut args = vec!["plan", "r.yaml"];
        args.extend_from_slice(case.args);
        let out = p.run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let code = out.status.code().unwrap_or(-1);
        let wanted = match case.at {
            "" => String::new(),
            at if at.starts_with("--set") => format!("{at} ({}): error: {}", case.args[1], case.says),
            at => format!("{at}: error: {}", case.says),
        };
        let problem = if code != case.exit {
            Some(format!("exit {code}, wanted {}", case.exit))
        } else if !stderr.contains(&wanted) {
            Some(format!("no `{wanted}`"))
        } else if !case.not.is_empty() && stderr.contains(case.not) {
            Some(format!("also says `{}`", case.not))
        } else if p.path(".babelflow").exists() {
            Some("plan created a store".into())
        } else {
            None
        };
        if let Some(problem) = problem {
            failures.push(format!("{}: {problem}\n{stderr}", case.mistake));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

#[test]
fn the_command_kind_says_where_outputs_go() {
    let p = Project::new();
    let text = p.ok(&["kinds", "command"]);
    assert!(text.contains("$OUT_<NAME>") && text.contains("$IN_<NAME>"), "{text}");
}

#[test]
fn kinds_show_the_allowed_range() {
    let p = Project::new();
    let text = p.ok(&["kinds", "pretrain"]);
    assert!(text.contains("lr") && text.contains("default 3e-4, above 0"), "{text}");
}
