//! The `command` stage kind: runs an external program with declared inputs and
//! outputs, like a DVC stage, so users can plug their own scripts into a recipe.
//!
//! The program runs through `sh -ec` (stop at the first failing command) in
//! the recipe's folder and finds its
//! inputs and outputs in environment variables:
//! - `IN_<NAME>`: the bound paths of input `<name>`, separated by spaces
//!   (`IN_<NAME>_0`, `IN_<NAME>_1`, ... one each);
//! - `OUT_<NAME>`: where to write output `<name>`; `OUT_DIR`: their folder.
//!
//! Names are upper-cased with `-` turned into `_`.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use babelflow_stage::{InputSpec, ParamSpec, ParamType, Params, StageContext, StageError, StageKind};

pub struct CommandKind;

const PARAMS: &[ParamSpec] = &[
    ParamSpec::required(
        "run",
        ParamType::Str,
        "shell command line, run with `sh -ec` in the recipe's folder; it reads input <name> from $IN_<NAME> \
         (space-separated paths; $IN_<NAME>_0, _1, … one each) and must write output <name> to $OUT_<NAME> \
         (all in $OUT_DIR); names upper-cased, `-` → `_`",
    ),
    ParamSpec::with_default(
        "outputs",
        ParamType::StrList,
        r#"["out"]"#,
        "names of the outputs the command writes (files or folders), each to $OUT_<NAME>",
    ),
    ParamSpec::optional("env", ParamType::StrMap, "extra environment variables"),
];

/// How many trailing output lines a failure message quotes.
const TAIL_LINES: usize = 15;

impl StageKind for CommandKind {
    fn name(&self) -> &'static str {
        "command"
    }
    fn code_version(&self) -> &'static str {
        "1"
    }
    fn summary(&self) -> &'static str {
        "run an external program: inputs in $IN_<NAME>, outputs written to $OUT_<NAME>"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn inputs(&self) -> &'static [InputSpec] {
        &[]
    }
    fn open_inputs(&self) -> bool {
        true
    }
    fn outputs(&self, params: &Params) -> Vec<String> {
        params.str_list("outputs").unwrap_or_default()
    }
    fn check(&self, params: &Params) -> Vec<(String, String)> {
        let outputs = params.str_list("outputs").unwrap_or_default();
        let mut problems = Vec::new();
        if outputs.is_empty() {
            problems.push(("outputs".into(), "must name at least one output".into()));
        }
        for name in &outputs {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                problems.push((
                    "outputs".into(),
                    format!("output name {name:?} may only hold letters, digits, `-`, `_` and `.`"),
                ));
            }
        }
        problems
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let script = ctx.params.str("run")?;
        let mut command = Command::new("sh");
        command
            .arg("-ec")
            .arg(script)
            .current_dir(ctx.base_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("OUT_DIR", ctx.out_dir)
            .env("BABELFLOW_INSTANCE", ctx.instance)
            .env("BABELFLOW_THREADS", ctx.threads.to_string());
        for name in self.outputs(ctx.params) {
            command.env(format!("OUT_{}", env_name(&name)), ctx.output(&name));
        }
        for (name, items) in ctx.inputs {
            let paths: Vec<String> = items.iter().map(|i| i.path.display().to_string()).collect();
            command.env(format!("IN_{}", env_name(name)), paths.join(" "));
            for (i, p) in paths.iter().enumerate() {
                command.env(format!("IN_{}_{i}", env_name(name)), p);
            }
        }
        for (key, value) in ctx.params.str_map("env")? {
            command.env(key, value);
        }
        ctx.log(&format!("$ {script}"));
        let mut child = command
            .spawn()
            .map_err(|e| StageError::failed(format!("cannot start `sh -ec {script:?}`: {e}")))?;
        let tail = std::sync::Mutex::new(std::collections::VecDeque::new());
        let status = std::thread::scope(|scope| {
            let stdout = child.stdout.take();
            let stderr = child.stderr.take();
            let tail = &tail;
            if let Some(out) = stdout {
                scope.spawn(move || copy_lines(out, ctx, tail));
            }
            if let Some(err) = stderr {
                scope.spawn(move || copy_lines(err, ctx, tail));
            }
            wait_or_cancel(&mut child, ctx)
        })?;
        if !status.success() {
            let tail: Vec<String> = tail.into_inner().unwrap_or_default().into_iter().collect();
            let code = status
                .code()
                .map(|c| format!("exit status {c}"))
                .unwrap_or_else(|| "a signal".into());
            return Err(StageError::failed(format!(
                "command ended with {code}; last output:\n{}",
                tail.join("\n")
            )));
        }
        Ok(())
    }
}

fn env_name(name: &str) -> String {
    name.to_ascii_uppercase().replace(['-', '.'], "_")
}

fn copy_lines(stream: impl Read, ctx: &StageContext, tail: &std::sync::Mutex<std::collections::VecDeque<String>>) {
    for line in BufReader::new(stream).lines().map_while(Result::ok) {
        ctx.log_file_only(&line);
        if let Ok(mut t) = tail.lock() {
            if t.len() == TAIL_LINES {
                t.pop_front();
            }
            t.push_back(line);
        }
    }
}

/// Waits for the child, killing it when the run is cancelled.
fn wait_or_cancel(child: &mut Child, ctx: &StageContext) -> Result<std::process::ExitStatus, StageError> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => {}
            Err(e) => return Err(StageError::failed(format!("waiting for the command: {e}"))),
        }
        if ctx.cancel.is_cancelled() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(StageError::Cancelled);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
