//! What the user sees while a run goes: a bar or spinner per running
//! instance on a terminal, plain lines otherwise (CI logs, pipes).

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use babelflow_stage::ProgressSink;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    multi: Option<MultiProgress>,
}

impl Progress {
    pub fn new() -> Self {
        let fancy = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        Progress {
            multi: fancy.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
        }
    }

    /// Prints a line above the bars (or plainly).
    pub fn line(&self, text: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    pub fn start(&self, instance: &str) -> InstanceProgress {
        let bar = self.multi.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg} [{elapsed}]")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(instance.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        InstanceProgress {
            instance: instance.to_string(),
            bar,
            last_line: Mutex::new(Instant::now()),
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

pub struct InstanceProgress {
    instance: String,
    bar: Option<ProgressBar>,
    last_line: Mutex<Instant>,
}

/// How often a plain-text run reports progress of one instance.
const PLAIN_INTERVAL: Duration = Duration::from_secs(10);

impl ProgressSink for InstanceProgress {
    fn update(&self, done: u64, total: Option<u64>, message: &str) {
        match &self.bar {
            Some(bar) => {
                if let Some(total) = total {
                    if bar.length() != Some(total) {
                        bar.set_length(total);
                        bar.set_style(
                            ProgressStyle::with_template(
                                "{spinner} {prefix:.bold} [{bar:30}] {pos}/{len} {wide_msg} [{elapsed}<{eta}]",
                            )
                            .unwrap_or_else(|_| ProgressStyle::default_bar())
                            .progress_chars("=> "),
                        );
                    }
                }
                bar.set_position(done);
                bar.set_message(message.to_string());
            }
            None => {
                if let Ok(mut last) = self.last_line.lock() {
                    if last.elapsed() >= PLAIN_INTERVAL {
                        *last = Instant::now();
                        let of = total.map(|t| format!("/{t}")).unwrap_or_default();
                        eprintln!("  {} {done}{of} {message}", self.instance);
                    }
                }
            }
        }
    }
}

impl Drop for InstanceProgress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
