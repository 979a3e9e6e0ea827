//! Throughput and memory of the data stages on a generated multilingual corpus.
//!
//!   cargo bench --bench data_stages                 # 200 MB
//!   BENCH_MB=50 cargo bench --bench data_stages     # smaller
//!
//! Measures, each in a fresh child process so peak RSS (VmHWM) is its own,
//! `BENCH_REPEAT` times (default 3) interleaved, with median ratios:
//! - `ingest` MB/s of raw text on one core, cleaning off and all cleaning on,
//!   against pyarrow writing the same paragraphs to the same Parquet (if installed);
//! - `tokenize` tokens/s against the tokenizers crate's bare `encode_batch`
//!   over the same documents and threads, with the CPU seconds each used.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use babelflow_stage::testing::{inputs, run_kind};
use babelflow_stage::StageKind;
use serde_json::json;

// The allocator the `babelflow` binary runs with.
#[global_allocator]
static ALLOCATOR: babelflow_model::BlockCache = babelflow_model::BlockCache::new();

const LANGS: [&str; 15] = [
    "en", "zh", "ar", "bn", "gu", "hi", "id", "ml", "mr", "ne", "sw", "ta", "te", "ur", "vi",
];

fn kind(name: &str) -> std::sync::Arc<dyn StageKind> {
    babelflow::registry::Registry::builtin().get(name).expect("kind")
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// CPU seconds (user + system, all threads) this process has used so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map_or(vec![], |(_, rest)| rest.split(' ').collect());
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    // utime and stime are fields 14 and 15 of stat(5); 100 ticks per second on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// Paragraphs of the 15 sample languages, numbered so none is a duplicate.
fn generate(path: &Path, megabytes: usize) {
    let root = babelflow_stage::testing::package_dir().join("data/samples/text");
    let paragraphs: Vec<String> = LANGS
        .iter()
        .flat_map(|l| {
            std::fs::read_to_string(root.join(format!("{l}.txt")))
                .unwrap()
                .split("\n\n")
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut out = String::with_capacity(megabytes << 20);
    let mut i = 0usize;
    while out.len() < megabytes << 20 {
        let p = &paragraphs[i % paragraphs.len()];
        out.push_str(&format!("{p} [{i}]\n\n"));
        i += 1;
    }
    std::fs::write(path, out).unwrap();
}

fn child(mode: &str, dir: &Path) {
    let text = dir.join("corpus.txt");
    let mb = std::fs::metadata(&text).unwrap().len() as f64 / (1 << 20) as f64;
    let out = dir.join(format!("out-{mode}"));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let start = Instant::now();
    match mode {
        "ingest-plain" | "ingest-clean" => {
            let params = if mode == "ingest-plain" {
                json!({"normalize": "none", "clean_whitespace": false, "dedup": false})
            } else {
                json!({"normalize": "nfc", "clean_whitespace": true, "dedup": true, "near_dup_threshold": 0.8, "min_chars": 10, "max_chars": 100000})
            };
            run_kind(kind("ingest").as_ref(), params, &inputs(&[("files", &[&text])]), &out).unwrap();
            let s = start.elapsed().as_secs_f64();
            println!(
                "{mode:14} {mb:8.1} MB in {s:6.2} s = {:7.1} MB/s, peak RSS {:7.1} MB",
                mb / s,
                peak_rss_mb()
            );
        }
        "tokenize" => {
            let corpus = dir.join("out-ingest-plain/corpus.parquet");
            let tok = dir.join("tok/tokenizer.json");
            run_kind(
                kind("tokenize").as_ref(),
                json!({}),
                &inputs(&[("corpus", &[&corpus]), ("tokenizer", &[&tok])]),
                &out,
            )
            .unwrap();
            let s = start.elapsed().as_secs_f64();
            let stats: serde_json::Value =
                serde_json::from_slice(&std::fs::read(out.join("stats.json")).unwrap()).unwrap();
            let n = stats["tokens"].as_f64().unwrap();
            println!(
                "{mode:14} {n:10.0} tokens in {s:6.2} s = {:9.0} tokens/s, peak RSS {:7.1} MB, CPU {:.1} s",
                n / s,
                peak_rss_mb(),
                cpu_seconds()
            );
        }
        "encode-bare" => {
            let corpus = dir.join("out-ingest-plain/corpus.parquet");
            let tok = tokenizers::Tokenizer::from_file(dir.join("tok/tokenizer.json")).unwrap();
            let mut texts = Vec::new();
            babelflow_corpus::read_corpus(&corpus, &mut |d| {
                texts.push(d.text);
                Ok(())
            })
            .unwrap();
            let start = Instant::now();
            let cpu_start = cpu_seconds();
            let mut n = 0usize;
            for chunk in texts.chunks(1024) {
                let enc = tok
                    .encode_batch(chunk.iter().map(String::as_str).collect::<Vec<_>>(), false)
                    .unwrap();
                n += enc.iter().map(|e| e.get_ids().len() + 2).sum::<usize>();
            }
            let s = start.elapsed().as_secs_f64();
            println!(
                "{mode:14} {n:10} tokens in {s:6.2} s = {:9.0} tokens/s (texts preloaded), CPU {:.1} s",
                n as f64 / s,
                cpu_seconds() - cpu_start
            );
        }
        other => panic!("unknown mode {other}"),
    }
}

/// The rate a measurement line reports: the number after " = ".
fn rate_in(line: &str) -> f64 {
    line.split(" = ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::NAN)
}

/// pyarrow writing the same paragraphs to the same Parquet (zstd), timed
/// from reading the text file, as `ingest` is.
const PYARROW: &str = r#"
import sys, time, resource, pyarrow as pa, pyarrow.parquet as pq
t = time.time()
text = open(sys.argv[1], encoding="utf-8").read()
paras = [p.strip() for p in text.split("\n\n") if p.strip()]
n = len(paras)
table = pa.table({"id": [f"corpus.txt:{i}" for i in range(n)], "lang": ["und"] * n, "text": paras, "source": ["corpus.txt"] * n})
pq.write_table(table, sys.argv[2], compression="zstd", compression_level=3)
s = time.time() - t
mb = len(text.encode("utf-8")) / 2**20
print(f"pyarrow        {mb:8.1f} MB in {s:6.2f} s = {mb/s:7.1f} MB/s, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024:7.1f} MB")
"#;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        child(&args[pos + 1], Path::new(&args[pos + 2]));
        return;
    }
    let mb: usize = std::env::var("BENCH_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let text: PathBuf = dir.path().join("corpus.txt");
    generate(&text, mb);
    println!(
        "corpus: {mb} MB of paragraphs in 15 languages; {} CPUs",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let me = std::env::current_exe().unwrap();
    // Runs one measurement in a child process; returns its rate (the number
    // before "tokens/s" or "MB/s").
    let run = |mode: &str| -> f64 {
        let out = Command::new(&me)
            .args(["--child", mode, dir.path().to_str().unwrap()])
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success(), "{mode} failed");
        let line = String::from_utf8_lossy(&out.stdout).to_string();
        print!("{line}");
        rate_in(&line)
    };
    // Interleaved repeats: the machine's other load shifts both alike.
    let repeats: usize = std::env::var("BENCH_REPEAT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let has_pyarrow = Command::new("python3")
        .args(["-c", "import pyarrow"])
        .status()
        .is_ok_and(|s| s.success());
    let pyarrow = || -> f64 {
        let out = dir.path().join("pyarrow.parquet");
        let printed = Command::new("python3")
            .args(["-c", PYARROW, text.to_str().unwrap(), out.to_str().unwrap()])
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&printed.stdout).to_string();
        print!("{line}");
        rate_in(&line)
    };
    let mut ratios = Vec::new();
    for _ in 0..repeats {
        let plain = run("ingest-plain");
        let clean = run("ingest-clean");
        if has_pyarrow {
            let reference = pyarrow();
            ratios.push((plain / reference, clean / reference));
        }
    }
    if ratios.is_empty() {
        println!("pyarrow        not installed: skipped");
    } else {
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "ingest / pyarrow: cleaning off {:.2}×, all cleaning on {:.2}× (medians of {repeats})",
            median(ratios.iter().map(|r| r.0).collect()),
            median(ratios.iter().map(|r| r.1).collect())
        );
    }
    // A LLaMA-style tokenizer trained on the samples, for the tokenize comparison.
    let tok_dir = dir.path().join("tok");
    std::fs::create_dir_all(&tok_dir).unwrap();
    let root = babelflow_stage::testing::package_dir().join("data/samples/text");
    let sample_corpus = dir.path().join("samples");
    std::fs::create_dir_all(&sample_corpus).unwrap();
    let files: Vec<PathBuf> = LANGS.iter().map(|l| root.join(format!("{l}.txt"))).collect();
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    run_kind(
        kind("ingest").as_ref(),
        json!({}),
        &inputs(&[("files", &refs)]),
        &sample_corpus,
    )
    .unwrap();
    let c = sample_corpus.join("corpus.parquet");
    run_kind(
        kind("train-tokenizer").as_ref(),
        json!({"vocab_size": 4000}),
        &inputs(&[("corpus", &[&c])]),
        &tok_dir,
    )
    .unwrap();
    let mut ratios: Vec<f64> = (0..repeats).map(|_| run("tokenize") / run("encode-bare")).collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "tokenize / bare encode_batch: {} (median {:.0} %)",
        ratios
            .iter()
            .map(|r| format!("{:.0} %", r * 100.0))
            .collect::<Vec<_>>()
            .join(", "),
        ratios[ratios.len() / 2] * 100.0
    );
}
