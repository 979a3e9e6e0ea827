//! Runs that fail, are killed, are cancelled, or meet another run: the store
//! never holds a half artifact, and the next run finishes the work.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{log_of, ran, reasons, signal, spawn_run, to_run, wait_for, Project};

/// A recipe whose `slow` stage writes half its output, then waits while the
/// file `hold` exists (the file is not an input, so it does not change the plan).
const HOLDING: &str = r#"name: holding
stages:
  first:
    kind: command
    with: { run: 'echo first > "$OUT_OUT"' }
  slow:
    kind: command
    needs: { first: first }
    with:
      run: 'echo partial > "$OUT_OUT"; touch started; while [ -f hold ]; do sleep 0.05; done; echo done >> "$OUT_OUT"'
"#;

fn tmp_entries(p: &Project) -> usize {
    std::fs::read_dir(p.path(".babelflow/tmp"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn kill_9_mid_run_leaves_no_artifact_that_looks_done_and_the_next_run_completes() {
    let p = Project::new();
    p.write("r.yaml", HOLDING);
    p.write("hold", "");
    let child = spawn_run(&p, &[]);
    wait_for(&p.path("started"));
    // Kill babelflow and its stage's shell, as a crash or OOM would.
    signal(&format!("-{}", child.id()), "-9");
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    std::fs::remove_file(p.path("hold")).unwrap();

    assert_eq!(tmp_entries(&p), 1, "the half-built output stays in tmp/ only");
    let plan = p.plan("r.yaml", &[]);
    assert_eq!(to_run(&plan), vec!["slow"], "{plan:#}");
    assert_eq!(reasons(&plan, "slow"), vec!["output missing (no earlier run)"]);

    let out = p.ok(&["run", "r.yaml"]);
    assert_eq!(ran(&out), vec!["slow"]);
    assert_eq!(tmp_entries(&p), 0, "the next run cleans what the killed one left");
    let fp = plan["instances"][1]["fingerprint"].as_str().unwrap();
    let text = std::fs::read_to_string(p.path(&format!(".babelflow/artifacts/{fp}/out"))).unwrap();
    assert_eq!(text, "partial\ndone\n");
}

#[test]
fn ctrl_c_cancels_cleanly_with_exit_code_130() {
    let p = Project::new();
    p.write("r.yaml", HOLDING);
    p.write("hold", "");
    let child = spawn_run(&p, &[]);
    wait_for(&p.path("started"));
    signal(&child.id().to_string(), "-INT");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("cancelled"));
    assert_eq!(tmp_entries(&p), 0, "a cancelled stage's partial output is removed");
    std::fs::remove_file(p.path("hold")).unwrap();
    let plan = p.plan("r.yaml", &[]);
    assert_eq!(to_run(&plan), vec!["slow"]);
    assert_eq!(reasons(&plan, "slow"), vec!["last run cancelled"]);
    p.ok(&["run", "r.yaml"]);
}

#[test]
fn a_second_run_waits_for_the_store_lock_or_fails_clearly() {
    let p = Project::new();
    p.write("r.yaml", HOLDING);
    p.write("hold", "");
    let first = spawn_run(&p, &[]);
    wait_for(&p.path("started"));

    let busy = p.run(&["run", "r.yaml", "--no-wait"]);
    assert_eq!(busy.status.code(), Some(1));
    let err = String::from_utf8_lossy(&busy.stderr);
    assert!(err.contains("another babelflow run is using the store"), "{err}");

    let waiting = spawn_run(&p, &[]);
    std::thread::sleep(Duration::from_millis(300));
    std::fs::remove_file(p.path("hold")).unwrap();
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success());
    let waiting = waiting.wait_with_output().unwrap();
    assert!(waiting.status.success());
    assert!(String::from_utf8_lossy(&waiting.stderr).contains("waiting"));
    assert!(
        ran(&String::from_utf8_lossy(&waiting.stdout)).is_empty(),
        "the waiting run found everything done"
    );
}

const FAILING: &str = r#"stages:
  bad:
    kind: command
    with: { run: 'echo "reading shard 7"; echo "shard 7 is corrupt" >&2; exit 3' }
  after_bad:
    kind: command
    needs: { x: bad }
    with: { run: 'cp "$IN_X" "$OUT_OUT"' }
  good:
    kind: command
    with: { run: 'echo ok > "$OUT_OUT"' }
  after_good:
    kind: command
    needs: { x: good }
    with: { run: 'cp "$IN_X" "$OUT_OUT"' }
"#;

#[test]
fn a_failure_stops_the_run_unless_keep_going() {
    let p = Project::new();
    p.write("r.yaml", FAILING);
    let out = p.run(&["run", "r.yaml", "--jobs", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("exit status 3") && stderr.contains("shard 7 is corrupt"),
        "{stderr}"
    );
    assert!(ran(&stdout).is_empty(), "{stdout}");
    assert!(stdout.contains("--keep-going"), "{stdout}");

    let out = p.run(&["run", "r.yaml", "--jobs", "1", "--keep-going"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut got = ran(&stdout);
    got.sort();
    assert_eq!(got, vec!["after_good", "good"]);
    assert!(
        stdout.contains("after_bad skipped: upstream bad did not finish"),
        "{stdout}"
    );

    // The log of the failed instance is kept in the store.
    let log = std::fs::read_to_string(log_of(&p, "bad")).unwrap();
    assert!(
        log.contains("reading shard 7") && log.contains("shard 7 is corrupt"),
        "{log}"
    );
    let plan = p.plan("r.yaml", &[]);
    assert_eq!(reasons(&plan, "bad"), vec!["last run failed"]);
}

#[test]
fn a_stage_that_forgets_an_output_fails() {
    let p = Project::new();
    p.write(
        "r.yaml",
        "stages:\n  a:\n    kind: command\n    with: { run: 'echo x > \"$OUT_A\"', outputs: [a, b] }\n",
    );
    let out = p.run(&["run", "r.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("without writing its declared output `b`"));
    assert_eq!(std::fs::read_dir(p.path(".babelflow/artifacts")).unwrap().count(), 0);
}

#[test]
fn status_graph_and_gc_show_and_tidy_the_store() {
    let p = Project::new();
    p.write(
        "r.yaml",
        r#"name: tidy
stages:
  a:
    kind: command
    with: { run: 'echo ${vars.x} > "$OUT_OUT"' }
  b:
    kind: command
    needs: { in: a }
    with: { run: 'cat "$IN_IN" > "$OUT_OUT"' }
vars: { x: one }
"#,
    );
    p.ok(&["run", "r.yaml"]);
    let status: serde_json::Value = serde_json::from_str(&p.ok(&["status", "r.yaml", "--json"])).unwrap();
    for row in status.as_array().unwrap() {
        assert_eq!(row["last_status"], "ok");
        assert_eq!(row["up_to_date"], true);
        assert!(Path::new(row["artifact"].as_str().unwrap())
            .join("manifest.json")
            .is_file());
    }
    let dot = p.ok(&["graph", "r.yaml"]);
    assert!(dot.contains("\"a\" -> \"b\""), "{dot}");
    let mermaid = p.ok(&["graph", "r.yaml", "--format", "mermaid"]);
    assert!(mermaid.contains("n0 --> n1"), "{mermaid}");

    // A new value makes new artifacts; the old ones are no longer referenced.
    p.ok(&["run", "r.yaml", "--set", "vars.x=two"]);
    assert_eq!(std::fs::read_dir(p.path(".babelflow/artifacts")).unwrap().count(), 4);
    // A dry run says what each would-be-deleted artifact was, and deletes nothing.
    let dry = p.ok(&["gc", "--store", ".babelflow", "--dry-run"]);
    for instance in ["a", "b"] {
        assert!(
            dry.contains(&format!("would delete {instance} of recipe tidy (command, made ")),
            "{dry}"
        );
    }
    assert!(dry.contains("2 unreferenced artifacts (would free"), "{dry}");
    assert_eq!(std::fs::read_dir(p.path(".babelflow/artifacts")).unwrap().count(), 4);
    let out = p.ok(&["gc", "--store", ".babelflow"]);
    assert!(out.contains("deleted a of recipe tidy (command, made "), "{out}");
    assert!(
        out.lines()
            .last()
            .unwrap()
            .starts_with("2 unreferenced artifacts (freed"),
        "{out}"
    );
    assert_eq!(std::fs::read_dir(p.path(".babelflow/artifacts")).unwrap().count(), 2);
    let plan = p.plan("r.yaml", &["--set", "vars.x=two"]);
    assert_eq!(plan["summary"]["cached"], 2);
}
