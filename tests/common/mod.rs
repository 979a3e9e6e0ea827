//! Helpers for end-to-end tests: a scratch folder with a recipe, and the
//! `babelflow` binary run on it as a user would.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test: this build's, or `BABELFLOW_TEST_BIN` (to run
/// these tests against another build, e.g. the one before a fix).
pub fn bin() -> PathBuf {
    std::env::var_os("BABELFLOW_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_babelflow")))
}

pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Self {
        Project {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args).current_dir(self.dir.path()).env_remove("BABELFLOW_STORE");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run babelflow")
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "babelflow {args:?} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `plan --json` parsed.
    pub fn plan(&self, recipe: &str, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["plan", recipe, "--json"];
        args.extend_from_slice(extra);
        serde_json::from_str(&self.ok(&args)).expect("plan --json is JSON")
    }
}

/// The artifact folder of an instance: the plan's store (relative paths are
/// the project's, where commands run) and the instance's fingerprint.
pub fn artifact_dir(p: &Project, plan: &serde_json::Value, name: &str) -> PathBuf {
    let inst = plan["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in plan"));
    let store = std::path::Path::new(plan["store"].as_str().expect("plan --json names its store"));
    let store = if store.is_absolute() {
        store.to_path_buf()
    } else {
        p.path(store.to_str().unwrap())
    };
    store.join("artifacts").join(inst["fingerprint"].as_str().unwrap())
}

/// The stats.json of an instance's artifact.
pub fn stats_of(p: &Project, plan: &serde_json::Value, name: &str) -> serde_json::Value {
    json_of(p, plan, name, "stats.json")
}

/// The manifest.json of an instance's artifact.
pub fn manifest_of(p: &Project, plan: &serde_json::Value, name: &str) -> serde_json::Value {
    json_of(p, plan, name, "manifest.json")
}

fn json_of(p: &Project, plan: &serde_json::Value, name: &str, file: &str) -> serde_json::Value {
    let path = artifact_dir(p, plan, name).join(file);
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// The rows of an evaluation's `metrics.parquet`: (lang, metric, value).
pub fn metrics_of(p: &Project, plan: &serde_json::Value, name: &str) -> Vec<(String, String, f64)> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::Float64Type;
    let path = artifact_dir(p, plan, name).join("metrics.parquet");
    let mut rows = Vec::new();
    babelflow_corpus::for_each_batch(&path, "an evaluation metrics table", &mut |b| {
        let (lang, metric) = (b.text("lang")?, b.text("metric")?);
        let value = b
            .batch
            .column_by_name("value")
            .and_then(|c| c.as_primitive_opt::<Float64Type>())
            .ok_or_else(|| b.error("no f64 column `value`"))?;
        for r in 0..b.num_rows() {
            rows.push((lang.value(r).to_string(), metric.value(r).to_string(), value.value(r)));
        }
        Ok(())
    })
    .unwrap();
    rows
}

/// Names of the instances a `plan --json` says will run.
/// Every instance a plan names, in its order.
pub fn instance_names(plan: &serde_json::Value) -> Vec<&str> {
    plan["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect()
}

/// One instance's entry in `plan --estimate --json`'s `estimate.instances`.
pub fn estimate_of<'a>(plan: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    plan["estimate"]["instances"]
        .as_array()
        .expect("plan --estimate --json has estimate.instances")
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in the estimate: {plan:#}"))
}

/// LLaMA-2-7B's config.json as Meta's HF folder has it, without weights:
/// enough to plan and estimate.
pub const LLAMA_2_7B_CONFIG: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "float16",
  "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
  "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
  "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "tie_word_embeddings": false
}"#;

/// Recipe stages that make a tiny "English" LLaMA from the shipped sample:
/// `text` (ingest), `tokenizer` (300 pieces), `model` (width 32, one layer).
pub fn tiny_english_model_stages() -> String {
    format!(
        "  text:
    kind: ingest
    needs: {{ files: \"{}\" }}
    with: {{ lang: en, text_unit: paragraph }}
  tokenizer:
    kind: train-tokenizer
    needs: {{ corpus: text }}
    with: {{ vocab_size: 300, min_frequency: 1 }}
  model:
    kind: init-model
    needs: {{ tokenizer: tokenizer }}
    with: {{ hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2 }}
",
        repo_root().join("data/samples/text/en.txt").display()
    )
}

pub fn to_run(plan: &serde_json::Value) -> Vec<String> {
    plan["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["action"] == "run")
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect()
}

/// The reasons a plan gives for one instance.
pub fn reasons(plan: &serde_json::Value, name: &str) -> Vec<String> {
    plan["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in plan"))["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

/// Instances the summary table reports as `ran`.
pub fn ran(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let name = parts.next()?;
            (parts.next()? == "ran").then(|| name.to_string())
        })
        .collect()
}

/// The checkout being tested, read at run time (see
/// `babelflow_stage::testing::package_dir` for why not `env!`).
pub fn repo_root() -> std::path::PathBuf {
    babelflow_stage::testing::package_dir()
}

pub const LANGS13: [&str; 13] = [
    "ar", "bn", "gu", "hi", "id", "ml", "mr", "ne", "sw", "ta", "te", "ur", "vi",
];

pub mod browser;

/// The store's log of an instance of the project's one recipe
/// (`logs/<recipe key>/<instance>.log`; the key holds the recipe's path).
pub fn log_of(p: &Project, instance: &str) -> PathBuf {
    let logs = p.path(".babelflow/logs");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&logs)
        .unwrap_or_else(|e| panic!("{}: {e}", logs.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.path().join(format!("{instance}.log")))
        .filter(|p| p.is_file())
        .collect();
    assert_eq!(found.len(), 1, "one log of {instance} under {}", logs.display());
    found.remove(0)
}

/// Waits (up to 30 s) until `path` exists.
pub fn wait_for(path: &Path) {
    wait_until(
        &format!("{} to appear", path.display()),
        Duration::from_secs(30),
        || path.exists(),
    );
}

/// Polls `ok` until it holds; fails the test after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A finished command's status, stdout and stderr, for assertion messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "{:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether a system service or tool a test needs is there. Without it the
/// test skips, except under CI=true, where `.ci/run` must have provided it
/// and its absence is a failure.
fn needed(present: bool, what: &str, how: &str) -> bool {
    if !present {
        assert!(std::env::var_os("CI").is_none(), "CI=true but {what} ({how})");
        eprintln!("skipped: {what} ({how})");
    }
    present
}

/// A Slurm cluster answers `sinfo` with a responding node.
pub fn slurm_cluster_up() -> bool {
    let up = Command::new("sinfo")
        .args(["--noheader", "--responding", "-o", "%T"])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
    needed(
        up,
        "no Slurm cluster answers `sinfo`",
        "start one with scripts/slurm-cluster.sh start",
    )
}

/// `mpirun` is installed.
pub fn mpirun_installed() -> bool {
    let there = Command::new("mpirun")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    needed(there, "`mpirun` is not installed", "apt install openmpi-bin")
}

/// The data half of a small training recipe: `./text.txt` line by line →
/// a 300-token BPE → ids → a 2-block GQA model. A recipe appends its
/// training stages (which read `model` and `tokens`).
pub const TINY_LM_STAGES: &str = r#"  corpus:
    kind: ingest
    needs: { files: ./text.txt }
    with: { lang: en, text_unit: line, langid: false }
  tokenizer:
    kind: train-tokenizer
    needs: { corpus: corpus }
    with: { vocab_size: 300, min_frequency: 1 }
  tokens:
    kind: tokenize
    needs: { corpus: corpus, tokenizer: tokenizer }
  model:
    kind: init-model
    needs: { tokenizer: tokenizer }
    with: { hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2 }
"#;

/// `babelflow run r.yaml EXTRA...` in the background, in its own process
/// group (so a signal reaches it as a terminal's Ctrl-C would).
pub fn spawn_run(p: &Project, extra: &[&str]) -> Child {
    let mut args = vec!["run", "r.yaml"];
    args.extend_from_slice(extra);
    let mut cmd = p.cmd(&args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.spawn().expect("spawn babelflow")
}

/// `kill SIG -- TARGET` (a pid, or `-pgid` for a group).
pub fn signal(target: &str, sig: &str) {
    let status = Command::new("kill").args([sig, "--", target]).status().unwrap();
    assert!(status.success());
}
