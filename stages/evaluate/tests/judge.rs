//! The judge client against a local OpenAI-compatible server on loopback:
//! canned verdicts, a 429 then success, a malformed verdict, a timeout;
//! scores, retries, the cache and the "unparseable" path.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use babelflow_corpus::StringTableWriter;
use babelflow_evaluate::respond::GENERATION_COLUMNS;
use common::*;
use serde_json::{json, Value};

struct Server {
    url: String,
    requests: Arc<AtomicUsize>,
    auth: Arc<Mutex<Vec<String>>>,
}

/// Replies by the marker in the answer being judged: GOOD → a verdict,
/// RATE → 429 the first time, SLOW → 2 s late the first time, MALFORMED →
/// prose without scores.
fn serve() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let auth = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::new(Mutex::new(std::collections::HashSet::<String>::new()));
    let (r, a) = (requests.clone(), auth.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let (r, a, seen) = (r.clone(), a.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                    if lower.starts_with("authorization:") {
                        a.lock().unwrap().push(line[14..].trim().to_string());
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                r.fetch_add(1, Ordering::SeqCst);
                let request: Value = serde_json::from_slice(&body).unwrap();
                let prompt = request["messages"][0]["content"].as_str().unwrap().to_string();
                let answer = prompt.split("[Assistant's answer]").nth(1).unwrap().to_string();
                let marker = ["GOOD", "RATE", "SLOW", "MALFORMED"]
                    .into_iter()
                    .find(|m| answer.contains(m))
                    .unwrap();
                let first = seen.lock().unwrap().insert(marker.to_string());
                let reply = |status: &str, extra: &str, content: &str| {
                    let body = json!({"choices": [{"message": {"role": "assistant", "content": content}}]}).to_string();
                    format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                let verdict =
                    r#"{"accuracy": 3, "fluency": 2, "informativeness": 2, "logical_coherence": 3, "harmlessness": 3}"#;
                let text = match marker {
                    "RATE" if first => reply("429 Too Many Requests", "Retry-After: 0\r\n", ""),
                    "SLOW" if first => {
                        std::thread::sleep(std::time::Duration::from_secs(2));
                        reply("200 OK", "", verdict)
                    }
                    "MALFORMED" => reply("200 OK", "", "A fine answer, I would say two out of three."),
                    _ => reply("200 OK", "", verdict),
                };
                let _ = stream.write_all(text.as_bytes());
            });
        }
    });
    Server { url, requests, auth }
}

fn generations(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("generations.parquet");
    let mut w = StringTableWriter::create(&path, &GENERATION_COLUMNS).unwrap();
    for (id, lang, response) in [
        ("1", "sw", "GOOD"),
        ("2", "sw", "RATE"),
        ("3", "hi", "MALFORMED"),
        ("4", "hi", "SLOW"),
    ] {
        w.push(&[
            id,
            lang,
            "Swali",
            "",
            "### Input:\nSwali\n\n### Output:\n",
            response,
            "Jibu",
            "0",
            "false",
        ])
        .unwrap();
    }
    w.finish().unwrap();
    path
}

#[test]
fn judge_scores_retries_caches_and_flags_unparseable_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve();
    let gens = generations(dir.path());
    std::env::set_var("BABELFLOW_TEST_JUDGE_KEY", "sk-test-secret");
    let params = json!({"base_url": server.url, "model": "judge-1", "api_key_env": "BABELFLOW_TEST_JUDGE_KEY",
                        "timeout_s": 0.5, "max_retries": 3, "backoff_s": 0.01, "max_unparseable": 0.5});
    let out = run(
        dir.path(),
        "judge",
        "judge",
        params.clone(),
        &[("generations", &[&gens])],
    );

    let s = stats(&out);
    assert_eq!(s["asked"], 4);
    assert_eq!(
        server.requests.load(Ordering::SeqCst),
        6,
        "GOOD 1, RATE 2 (429 then ok), SLOW 2 (timeout then ok), MALFORMED 1"
    );
    assert_eq!(s["per_lang"]["sw"]["judged"], 2);
    assert_eq!(s["per_lang"]["sw"]["avg"].as_f64().unwrap(), 13.0 / 5.0);
    assert_eq!(s["per_lang"]["hi"]["judged"], 1);
    assert_eq!(s["per_lang"]["hi"]["unparseable"], 1, "{s}");
    assert!(server.auth.lock().unwrap().iter().all(|a| a == "Bearer sk-test-secret"));

    // The malformed reply is kept, verbatim, and not scored.
    let rows = table(&out.join("judgments.parquet"), &["verdict", "judge_reply", "accuracy"]);
    let col = |i: usize| rows.iter().map(|r| r[i].clone()).collect::<Vec<_>>();
    let (verdicts, replies, accuracy) = (col(0), col(1), col(2));
    assert_eq!(verdicts, ["ok", "ok", "unparseable", "ok"]);
    assert!(replies[2].contains("two out of three"));
    assert_eq!(accuracy[2], "");

    // A rerun asks nothing: every reply comes from the cache.
    let again = run(dir.path(), "judge", "judge", params, &[("generations", &[&gens])]);
    assert_eq!(stats(&again)["cached"], 4);
    assert_eq!(server.requests.load(Ordering::SeqCst), 6);

    // The key is never written down.
    for entry in std::fs::read_dir(&out).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains("sk-test-secret"),
                "{}",
                path.display()
            );
        }
    }
}
