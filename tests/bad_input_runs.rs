//! The bad-input catalogue, part 2: what goes wrong while a recipe runs,
//! or in the files around it. Each test is one entry of the catalogue in
//! the reliability issue and asserts what the user relies on: no silent
//! wrong result, no lost work, no leaked secret, no wedged instance, and a
//! message that names the instance (never a fingerprint) and the cause.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{artifact_dir, log_of, reasons, repo_root, signal, spawn_run, wait_for, Project};

fn samples(rel: &str) -> String {
    repo_root().join("data/samples").join(rel).display().to_string()
}

/// `run` and its (exit code, stdout + stderr).
fn run(p: &Project, args: &[&str]) -> (i32, String) {
    let out = p.run(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// The data half of the recipes below: English text → tokenizer → tokens → model.
fn data_stages() -> String {
    format!(
        r#"  corpus:
    kind: ingest
    needs: {{ files: "{en}" }}
    with: {{ lang: en }}
  tokenizer:
    kind: train-tokenizer
    needs: {{ corpus: corpus }}
    with: {{ vocab_size: 300 }}
  tokens:
    kind: tokenize
    needs: {{ corpus: corpus, tokenizer: tokenizer }}
  model:
    kind: init-model
    needs: {{ tokenizer: tokenizer }}
    with: {{ hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2 }}
"#,
        en = samples("text/en.txt")
    )
}

fn training_recipe(with: &str) -> String {
    format!(
        "name: r\nstages:\n{}  train:\n    kind: pretrain\n    needs: {{ model: model, tokens: tokens }}\n    with: {{ seq_len: 16, batch_size: 2, warmup_steps: 0, eval_every: 1000, {with} }}\n",
        data_stages()
    )
}

// --- 2. init-model from a JSON file that is not a tokenizer -------------

#[test]
fn init_model_refuses_a_json_file_that_is_not_a_tokenizer() {
    let p = Project::new();
    p.write("not-a-tokenizer.json", r#"{"name": "x"}"#);
    p.write(
        "r.yaml",
        "name: r\nstages:\n  model:\n    kind: init-model\n    needs: { tokenizer: ./not-a-tokenizer.json }\n    with: { hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2 }\n",
    );
    let (code, text) = run(&p, &["run", "r.yaml"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("not-a-tokenizer.json: not an HF tokenizer.json: it has no `model` (its keys: name)"),
        "{text}"
    );
    assert!(
        !p.path(".babelflow/artifacts").read_dir().unwrap().any(|_| true),
        "nothing cached"
    );
}

// --- 3. a model and token ids from different tokenizers -----------------

#[test]
fn training_refuses_tokens_from_another_tokenizer_than_the_models() {
    let p = Project::new();
    // Two tokenizers of the same size, from different text.
    let recipe = format!(
        r#"name: r
stages:
{}  other_corpus:
    kind: ingest
    needs: {{ files: "{sw}" }}
    with: {{ lang: sw }}
  other_tokenizer:
    kind: train-tokenizer
    needs: {{ corpus: other_corpus }}
    with: {{ vocab_size: 300 }}
  other_tokens:
    kind: tokenize
    needs: {{ corpus: corpus, tokenizer: other_tokenizer }}
  train:
    kind: pretrain
    needs: {{ model: model, tokens: other_tokens }}
    with: {{ steps: 1, seq_len: 16, batch_size: 2 }}
"#,
        data_stages(),
        sw = samples("text/sw.txt")
    );
    p.write("r.yaml", &recipe);
    let (code, text) = run(&p, &["run", "r.yaml"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("other_tokens:tokens.bin: the training tokens come from another tokenizer than the model's"),
        "{text}"
    );
    // Named by instance, never by a path into the store.
    assert!(!text.contains("/artifacts/"), "{text}");
}

// --- 4. a sharded checkpoint that lacks a shard or a tensor -------------

fn checkpoint(p: &Project, config_edit: Option<(&str, &str)>) -> PathBuf {
    let fixture = repo_root().join("stages/model/tests/fixtures/tiny-gqa");
    let dir = p.path("ckpt");
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = std::fs::read_to_string(fixture.join("config.json")).unwrap();
    if let Some((from, to)) = config_edit {
        assert!(config.contains(from), "{config}");
        config = config.replace(from, to);
    }
    std::fs::write(dir.join("config.json"), config).unwrap();
    std::fs::copy(fixture.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    dir
}

const IMPORT: &str = "name: r\nstages:\n  base:\n    kind: import-model\n    needs: { checkpoint: ./ckpt }\n";

#[test]
fn import_refuses_an_index_that_names_a_missing_shard() {
    let p = Project::new();
    let dir = checkpoint(&p, None);
    std::fs::rename(
        dir.join("model.safetensors"),
        dir.join("model-00001-of-00002.safetensors"),
    )
    .unwrap();
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                           "model.norm.weight": "model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    p.write("r.yaml", IMPORT);
    let (code, text) = run(&p, &["run", "r.yaml"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("model.safetensors.index.json: names shard `model-00002-of-00002.safetensors`, which is not in"),
        "{text}"
    );
    assert_eq!(std::fs::read_dir(p.path(".babelflow/artifacts")).unwrap().count(), 0);
}

#[test]
fn import_refuses_a_checkpoint_missing_a_tensor_the_config_implies() {
    let p = Project::new();
    // One layer more in config.json than in the weights.
    let config = std::fs::read_to_string(repo_root().join("stages/model/tests/fixtures/tiny-gqa/config.json")).unwrap();
    let layers: serde_json::Value = serde_json::from_str(&config).unwrap();
    let n = layers["num_hidden_layers"].as_u64().unwrap();
    let from = format!("\"num_hidden_layers\": {n}");
    let to = format!("\"num_hidden_layers\": {}", n + 1);
    checkpoint(&p, Some((&from, &to)));
    p.write("r.yaml", IMPORT);
    let (code, text) = run(&p, &["run", "r.yaml"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&format!(
            "tensor `model.layers.{n}.input_layernorm.weight` is missing (9 of the"
        )),
        "{text}"
    );
}

// --- 5. the store's copy of a checkpoint is not the user's file ---------

#[test]
fn editing_the_source_checkpoint_in_place_never_changes_the_imported_artifact() {
    use std::os::unix::fs::MetadataExt;
    let p = Project::new();
    let dir = checkpoint(&p, None);
    p.write("r.yaml", IMPORT);
    p.ok(&["run", "r.yaml"]);
    let plan = p.plan("r.yaml", &[]);
    let stored = artifact_dir(&p, &plan, "base").join("model/model.safetensors");
    let original = std::fs::read(&stored).unwrap();
    assert_eq!(
        std::fs::metadata(&stored).unwrap().nlink(),
        1,
        "a copy, not a hard link"
    );
    // Overwrite the last bytes (weight data) of the user's file in place.
    let source = dir.join("model.safetensors");
    let mut f = std::fs::OpenOptions::new().write(true).open(&source).unwrap();
    let len = f.metadata().unwrap().len();
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(len - 4)).unwrap();
    f.write_all(&[1, 2, 3, 4]).unwrap();
    drop(f);
    assert_eq!(std::fs::read(&stored).unwrap(), original, "the artifact kept its bytes");
    let why = reasons(&p.plan("r.yaml", &[]), "base").join("; ");
    assert!(why.contains("input file changed"), "{why}");
}

// --- 6. two recipes with one name in one store --------------------------

#[test]
fn two_recipes_with_the_same_name_keep_their_artifacts_through_gc() {
    let p = Project::new();
    for (dir, word) in [("a", "alpha"), ("b", "beta")] {
        p.write(
            &format!("{dir}/r.yaml"),
            &format!(
                "name: same\nstages:\n  s:\n    kind: command\n    with: {{ run: 'echo {word} > \"$OUT_OUT\"' }}\n"
            ),
        );
    }
    let store = p.path("store").display().to_string();
    p.ok(&["run", "a/r.yaml", "--store", &store]);
    p.ok(&["run", "b/r.yaml", "--store", &store]);
    let gc = p.ok(&["gc", "--store", &store]);
    assert!(gc.starts_with("0 unreferenced artifacts"), "{gc}");
    assert_eq!(std::fs::read_dir(p.path("store/artifacts")).unwrap().count(), 2);
    // Each recipe sees its own last run.
    for dir in ["a", "b"] {
        let plan = p.plan(&format!("{dir}/r.yaml"), &["--store", &store]);
        assert_eq!(plan["summary"]["cached"], 1, "{plan}");
    }
}

// --- 7. a diverging run, a corrupt checkpoint, --force -------------------

fn resume_dir(p: &Project, instance: &str) -> PathBuf {
    let plan = p.plan("r.yaml", &[]);
    let fp = plan["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == instance)
        .unwrap()["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    p.path(".babelflow/resume").join(fp)
}

#[test]
fn a_diverging_step_is_never_checkpointed_and_never_wedges_the_instance() {
    let p = Project::new();
    p.write("r.yaml", &training_recipe("steps: 40, lr: 3.0e2, checkpoint_every: 2"));
    let (code, text) = run(&p, &["run", "r.yaml"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("at step") && text.contains("nothing of this step was saved"),
        "{text}"
    );
    // Whatever was checkpointed is finite and reads back.
    for f in files_under(&resume_dir(&p, "train")) {
        if f.ends_with("position.json") {
            let json = std::fs::read_to_string(&f).unwrap();
            assert!(!json.contains("null"), "{}: {json}", f.display());
        }
    }
    // The next runs fail the same way, not on the checkpoint.
    for extra in [&[][..], &["--force", "train"][..]] {
        let mut args = vec!["run", "r.yaml"];
        args.extend_from_slice(extra);
        let (code, again) = run(&p, &args);
        assert_eq!(code, 1, "{again}");
        assert!(again.contains("nothing of this step was saved"), "{again}");
        assert!(!again.contains("position.json"), "{again}");
    }
}

#[test]
fn a_corrupt_checkpoint_is_set_aside_with_a_warning_and_the_run_completes() {
    let p = Project::new();
    p.write("r.yaml", &training_recipe("steps: 4, checkpoint_every: 2"));
    p.ok(&["run", "r.yaml", "--only", "model", "--only", "tokens"]);
    let checkpoint = resume_dir(&p, "train").join("checkpoint");
    std::fs::create_dir_all(&checkpoint).unwrap();
    std::fs::write(
        checkpoint.join("position.json"),
        r#"{"position": {"step": 2, "grad_norm": null"#,
    )
    .unwrap();
    let (code, text) = run(&p, &["run", "r.yaml"]);
    assert_eq!(code, 0, "{text}");
    let log = std::fs::read_to_string(log_of(&p, "train")).unwrap();
    assert!(log.contains("warning: the checkpoint does not load"), "{log}");
    assert!(!log.contains("resuming from"), "{log}");
}

#[test]
fn plan_says_a_run_resumes_and_force_starts_from_scratch() {
    let p = Project::new();
    p.write("r.yaml", &training_recipe("steps: 100000, checkpoint_every: 2"));
    p.ok(&["run", "r.yaml", "--only", "model", "--only", "tokens"]);
    let position = resume_dir(&p, "train").join("checkpoint/position.json");
    let child = spawn_run(&p, &[]);
    wait_for(&position);
    signal(&format!("-{}", child.id()), "-INT");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));

    let why = reasons(&p.plan("r.yaml", &[]), "train").join("; ");
    assert!(why.contains("resumes from the checkpoint at step"), "{why}");
    assert!(!why.contains("no earlier run"), "{why}");
    let forced = reasons(&p.plan("r.yaml", &["--force", "train"]), "train").join("; ");
    assert!(
        forced.contains("forced; from scratch: the checkpoint at step"),
        "{forced}"
    );

    // A forced run starts at step 0 (its log says which, before step 1).
    let log = log_of(&p, "train");
    std::fs::remove_file(&log).unwrap();
    let child = spawn_run(&p, &["--force", "train"]);
    let started = Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("from step 0") || text.contains("resuming from") {
            break text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the forced run logged nothing"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    signal(&format!("-{}", child.id()), "-INT");
    child.wait_with_output().unwrap();
    assert!(
        text.contains("training from step 0") && !text.contains("resuming from"),
        "{text}"
    );
}

// --- 8, and the judge's errors: a loopback OpenAI-compatible server ------

const KEY: &str = "sk-test-Z3cr3tK3y-0123456789";

/// Serves chat completions by the requested model: `echo-401` answers 401
/// with the Authorization header in the body, `echo-200` a verdict whose
/// text quotes the key, `prose` replies without scores, `slow-429` 429 with
/// `Retry-After: 60`. Returns the base URL and a request counter file.
fn judge_server(dir: &Path) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let seen = dir.join("requests");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut length, mut auth) = (0usize, String::new());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if lower.starts_with("authorization:") {
                    auth = line[14..].trim().to_string();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let _ = std::fs::write(&seen, "x");
            let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let (status, extra, reply) = match request["model"].as_str().unwrap_or("") {
                "echo-401" => (
                    "401 Unauthorized",
                    "",
                    format!(r#"{{"error": {{"message": "Incorrect API key provided: {auth}"}}}}"#),
                ),
                "slow-429" => ("429 Too Many Requests", "Retry-After: 60\r\n", "{}".to_string()),
                model => {
                    let content = if model == "prose" {
                        "I think it is rather good.".to_string()
                    } else {
                        format!(
                            r#"{{"accuracy": 2, "fluency": 3, "informativeness": 2, "logical_coherence": 3, "harmlessness": 3}} (asked with {auth})"#
                        )
                    };
                    let reply = serde_json::json!({"choices": [{"message": {"content": content}}]});
                    ("200 OK", "", reply.to_string())
                }
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                reply.len()
            );
        }
    });
    url
}

fn judge_project(model: &str) -> (Project, String) {
    let p = Project::new();
    let url = judge_server(p.dir.path());
    let mut table = babelflow_corpus::StringTableWriter::create(
        &p.path("generations.parquet"),
        &babelflow_evaluate::respond::GENERATION_COLUMNS,
    )
    .unwrap();
    for i in 0..3 {
        let id = format!("q{i}");
        table
            .push(&[&id, "sw", "Swali?", "", "prompt", "Jibu.", "Jibu.", "50", "false"])
            .unwrap();
    }
    table.finish().unwrap();
    p.write(
        "r.yaml",
        &format!(
            "name: r\nstages:\n  judged:\n    kind: judge\n    needs: {{ generations: ./generations.parquet }}\n    with: {{ base_url: \"{url}\", model: {model}, api_key_env: BF_TEST_KEY, max_retries: 1, backoff_s: 0.01 }}\n"
        ),
    );
    (p, url)
}

fn judge_run(p: &Project) -> (i32, String) {
    let out = p.cmd(&["run", "r.yaml"]).env("BF_TEST_KEY", KEY).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn assert_key_nowhere(p: &Project, terminal: &str) {
    assert!(!terminal.contains(KEY), "the key reached the terminal:\n{terminal}");
    for f in files_under(&p.path(".babelflow")) {
        let bytes = std::fs::read(&f).unwrap();
        let found = bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes());
        assert!(!found, "the key is in {}", f.display());
    }
}

#[test]
fn an_api_key_the_server_echoes_never_reaches_the_store_or_the_terminal() {
    let (p, _) = judge_project("echo-401");
    let (code, text) = judge_run(&p);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("HTTP 401") && text.contains("[REDACTED]"), "{text}");
    assert_key_nowhere(&p, &text);

    // A reply that quotes the key is cached and tabled without it.
    let (p, _) = judge_project("echo-200");
    let (code, text) = judge_run(&p);
    assert_eq!(code, 0, "{text}");
    assert_key_nowhere(&p, &text);
}

#[test]
fn a_judge_that_never_gives_scores_fails_the_stage() {
    let (p, _) = judge_project("prose");
    let (code, text) = judge_run(&p);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("3 of 3 judge replies have no five scores"), "{text}");
}

#[test]
fn ctrl_c_interrupts_a_retry_after_wait_at_once() {
    let (p, _) = judge_project("slow-429");
    let mut cmd = p.cmd(&["run", "r.yaml"]);
    cmd.env("BF_TEST_KEY", KEY)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn().unwrap();
    wait_for(&p.path("requests"));
    std::thread::sleep(Duration::from_millis(200));
    let asked = Instant::now();
    signal(&format!("-{}", child.id()), "-INT");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "exit took {:?} after Ctrl-C",
        asked.elapsed()
    );
}

// --- an ingest that keeps nothing ----------------------------------------

#[test]
fn an_ingest_that_keeps_nothing_fails_there_unless_allowed() {
    let p = Project::new();
    std::fs::create_dir_all(p.path("empty")).unwrap();
    p.write(
        "r.yaml",
        &format!(
            "name: r\nstages:\n  short:\n    kind: ingest\n    needs: {{ files: \"{en}\" }}\n    with: {{ lang: en, min_chars: 100000 }}\n  folder:\n    kind: ingest\n    needs: {{ files: ./empty }}\n    with: {{ lang: en }}\n",
            en = samples("text/en.txt")
        ),
    );
    let (code, text) = run(&p, &["run", "r.yaml", "--keep-going"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("✗ short failed"), "{text}");
    assert!(
        text.contains("no document is left: all") && text.contains("too_short)"),
        "{text}"
    );
    assert!(
        text.contains("✗ folder failed") && text.contains("no input file was found in"),
        "{text}"
    );
    let (code, text) = run(
        &p,
        &[
            "run",
            "r.yaml",
            "--set",
            "stages.short.with.allow_empty=true",
            "--only",
            "short",
        ],
    );
    assert_eq!(code, 0, "{text}");
    let log = std::fs::read_to_string(log_of(&p, "short")).unwrap();
    assert!(log.contains("warning: the corpus is empty"), "{log}");
}

#[test]
fn documents_longer_than_max_doc_chars_are_split_into_numbered_parts() {
    let p = Project::new();
    p.write("long.txt", &"word ".repeat(5_000));
    p.write(
        "r.yaml",
        "name: r\nstages:\n  corpus:\n    kind: ingest\n    needs: { files: ./long.txt }\n    with: { lang: en, text_unit: file, max_doc_chars: 1000 }\n",
    );
    p.ok(&["run", "r.yaml"]);
    let stats = common::stats_of(&p, &p.plan("r.yaml", &[]), "corpus");
    assert_eq!(stats["split_documents"], 1, "{stats}");
    assert_eq!(stats["documents_out"], stats["split_parts"], "{stats}");
    assert!(stats["split_parts"].as_u64().unwrap() >= 25, "{stats}");
}

// --- the store: damage, looking without creating -------------------------

#[test]
fn a_damaged_artifact_is_rebuilt_and_verify_finds_same_size_edits() {
    let p = Project::new();
    p.write(
        "r.yaml",
        "name: r\nstages:\n  s:\n    kind: command\n    with: { run: 'echo hello > \"$OUT_OUT\"' }\n",
    );
    p.ok(&["run", "r.yaml"]);
    let out = artifact_dir(&p, &p.plan("r.yaml", &[]), "s").join("out");
    // A change of size: seen by every plan.
    std::fs::write(&out, "hello, world\n").unwrap();
    let why = reasons(&p.plan("r.yaml", &[]), "s").join("; ");
    assert_eq!(why, "artifact damaged (out changed size (13 bytes, was 6)); rebuilding");
    p.ok(&["run", "r.yaml"]);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "hello\n");
    // The same size, other bytes: seen by `verify`, which sets it aside.
    std::fs::write(&out, "jello\n").unwrap();
    let (code, text) = run(&p, &["verify"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("(s): damaged: out changed content"), "{text}");
    assert!(text.contains("the next run rebuilds it"), "{text}");
    p.ok(&["run", "r.yaml"]);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "hello\n");
    assert!(p.ok(&["verify"]).contains("1 intact, 0 damaged"));
}

#[test]
fn looking_at_a_store_that_does_not_exist_creates_nothing() {
    let p = Project::new();
    p.write(
        "r.yaml",
        "name: r\nstages:\n  s:\n    kind: command\n    with: { run: 'echo hi > \"$OUT_OUT\"' }\n",
    );
    for cmd in ["status", "plan"] {
        p.ok(&[cmd, "r.yaml", "--store", "typo"]);
        assert!(!p.path("typo").exists(), "`{cmd}` created the store");
    }
    p.ok(&["run", "r.yaml"]);
    // A store keeps itself out of git and backups.
    let ignore = std::fs::read_to_string(p.path(".babelflow/.gitignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "*"), "{ignore}");
    assert!(p.path(".babelflow/CACHEDIR.TAG").is_file());
}

// --- a full disk ---------------------------------------------------------

#[test]
fn a_full_disk_gives_a_plain_message_and_leaves_no_temporary_files() {
    let p = Project::new();
    // The first output nearly fills the store, the second does not fit,
    // and then the lock file cannot be saved either.
    p.write(
        "r.yaml",
        "name: r\nstages:\n  big:\n    kind: command\n    with: { run: 'head -c 500000 /dev/zero > \"$OUT_OUT\"' }\n  more:\n    kind: command\n    needs: { x: big }\n    with: { run: 'head -c 100000 /dev/zero > \"$OUT_OUT\"' }\n",
    );
    std::fs::create_dir_all(p.path(".babelflow")).unwrap();
    // A 520 KB file system over the store, in a user and mount namespace of
    // its own (no root needed): a real ENOSPC.
    let bin = common::bin().display().to_string();
    let out = std::process::Command::new("unshare")
        .args(["-rm", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs -o size=520k none .babelflow || exit 99; '{bin}' run r.yaml; code=$?; \
             find .babelflow -name '*.tmp.*' | sed 's/^/LEFTOVER /' >&2; exit $code"
        ))
        .current_dir(p.dir.path())
        .env_remove("BABELFLOW_STORE")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    if text.contains("unshare: ") || out.status.code() == Some(99) {
        assert!(std::env::var_os("CI").is_none(), "CI must allow `unshare -rm`: {text}");
        eprintln!("skipped: this machine does not allow user namespaces ({text})");
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("✗ more failed") && text.contains("No space left on device"),
        "{text}"
    );
    assert!(text.contains("the results in the store are safe"), "{text}");
    assert!(!text.contains("Io(") && !text.contains('\u{1b}'), "{text}");
    // Listed inside the namespace, before the file system went with it.
    assert!(!text.contains("LEFTOVER"), "{text}");
}

// --- a Slurm cluster whose controller is down ---------------------------

#[test]
fn a_slurm_controller_that_is_down_is_one_message_and_nothing_is_submitted() {
    use std::os::unix::fs::PermissionsExt;
    let p = Project::new();
    // Stand-ins first on PATH: slurmctld down, and an sbatch that records
    // being called (it must not be).
    let shim = p.path("shim");
    std::fs::create_dir_all(&shim).unwrap();
    let script = |name: &str, body: &str| {
        let path = shim.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    script("scontrol", "echo 'Slurmctld(primary) at head is DOWN'; exit 1");
    script(
        "sbatch",
        &format!("touch {}; exit 1", p.path("sbatch-called").display()),
    );
    let stages: String = (1..=6)
        .map(|i| format!("  s{i}:\n    kind: command\n    with: {{ run: 'echo {i} > \"$OUT_OUT\"' }}\n"))
        .collect();
    p.write("r.yaml", &format!("name: r\nstages:\n{stages}"));
    let path = format!("{}:{}", shim.display(), std::env::var("PATH").unwrap_or_default());
    let out = p
        .cmd(&["run", "r.yaml", "--executor", "slurm", "--keep-going"])
        .env("PATH", path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_eq!(
        text.matches("the Slurm controller does not answer").count(),
        1,
        "the cause once:\n{text}"
    );
    assert!(
        text.contains("Slurmctld(primary) at head is DOWN") && text.contains("nothing was submitted"),
        "{text}"
    );
    // Every other line refers to it (retries included: Slurm retries once).
    assert_eq!(text.matches("✗ ").count(), 6, "{text}");
    assert_eq!(text.matches("the same cause as").count(), 11, "{text}");
    assert!(!p.path("sbatch-called").exists(), "sbatch was called:\n{text}");
}
