//! A run in which something the report needs fails still ends in a report
//! that says what is missing and why; the partial report never stands in for
//! the complete one, which the next successful run makes.

mod common;

use common::{ran, Project};

/// `mirror` fails while the file `broken` exists (not an input, so fixing
/// it does not change the plan: the failure is transient, like a download).
const RECIPE: &str = r#"name: partial
stages:
  mirror:
    kind: command
    with:
      run: 'if [ -f broken ]; then echo "the mirror is down" >&2; exit 4; fi; cp sw.json "$OUT_STATS_JSON"'
      outputs: [stats.json]
  local:
    kind: command
    with: { run: 'cp hi.json "$OUT_STATS_JSON"', outputs: [stats.json] }
  report:
    kind: report
    needs: { corpus: ["local:stats.json", "mirror:stats.json"] }
"#;

fn stats(lang: &str, chars: u64) -> String {
    format!(
        r#"{{"documents_in": 3, "languages": {{"{lang}": {{"documents": 2, "chars": {chars}}}}}, "dropped": {{"too_short": 1}}}}"#
    )
}

fn report_md(p: &Project) -> String {
    let out = p.path("out");
    let _ = std::fs::remove_dir_all(&out);
    p.ok(&["report", "r.yaml", "--out", out.to_str().unwrap()]);
    std::fs::read_to_string(out.join("report.md")).unwrap()
}

#[test]
fn a_failed_input_gives_a_report_that_says_so_and_the_next_run_completes_it() {
    let p = Project::new();
    p.write("r.yaml", RECIPE);
    p.write("sw.json", &stats("sw", 4321));
    p.write("hi.json", &stats("hi", 1234));
    p.write("broken", "");

    // Without --keep-going a failure stops the run; the report is still made.
    let out = p.run(&["run", "r.yaml", "--jobs", "1"]);
    assert_eq!(out.status.code(), Some(1), "a failed instance fails the run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let partial_line = stdout.lines().find(|l| l.contains("report made without"));
    assert!(partial_line.is_some_and(|l| l.contains("mirror")), "{stdout}");
    let md = report_md(&p);
    assert!(md.contains("Missing from this report"), "{md}");
    assert!(
        md.lines()
            .any(|l| l.contains("| corpus | mirror |") && l.contains("failed") && l.contains("the mirror is down")),
        "{md}"
    );
    assert!(!md.contains("4321"), "nothing is invented for the missing input: {md}");
    let plan = p.plan("r.yaml", &[]);
    let report = plan["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "report")
        .unwrap();
    assert_eq!(
        report["action"], "run",
        "a partial report does not satisfy the plan: {plan:#}"
    );
    assert_eq!(report["reasons"][0], "last run partial");

    // The cause goes away: the missing input and the report are made, complete.
    std::fs::remove_file(p.path("broken")).unwrap();
    let stdout = p.ok(&["run", "r.yaml", "--jobs", "1"]);
    let mut got = ran(&stdout);
    got.sort();
    assert!(
        got.contains(&"mirror".to_string()) && got.contains(&"report".to_string()),
        "{stdout}"
    );
    let md = report_md(&p);
    assert!(!md.contains("Missing from this report"), "{md}");
    assert!(md.contains("4321") && md.contains("1234"), "{md}");
    let run_row = |name: &str| {
        md.lines()
            .find(|l| l.starts_with(&format!("| {name} | command |")))
            .unwrap_or_else(|| panic!("no run row for {name}: {md}"))
            .to_string()
    };
    assert!(run_row("mirror").contains("| ran ("), "{md}");

    // And then nothing is left to do.
    let stdout = p.ok(&["run", "r.yaml"]);
    assert!(ran(&stdout).is_empty(), "{stdout}");
}
