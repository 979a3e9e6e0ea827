//! The engine's promise: a second run does nothing, a change reruns exactly
//! what it touches, and the plan says why.

mod common;

use common::{ran, reasons, repo_root, to_run, Project, LANGS13};

fn commands13(p: &Project) -> String {
    let text = std::fs::read_to_string(repo_root().join("pipelines/examples/commands-13.yaml")).unwrap();
    p.write("commands-13.yaml", &text);
    "commands-13.yaml".to_string()
}

#[test]
fn thirteen_languages_run_once_then_everything_is_cached() {
    let p = Project::new();
    let recipe = commands13(&p);
    let first = p.ok(&["run", &recipe, "--jobs", "2"]);
    // 13 languages × 7 stages + one fan-in.
    assert_eq!(ran(&first).len(), 13 * 7 + 1, "{first}");
    let report = std::fs::read_to_string(
        p.path(".babelflow/artifacts")
            .read_dir()
            .unwrap()
            .map(|e| e.unwrap().path().join("out"))
            .find(|path| {
                std::fs::read_to_string(path)
                    .map(|t| t.lines().count() == 26)
                    .unwrap_or(false)
            })
            .expect("the fan-in report holds two lines per language"),
    )
    .unwrap();
    for lang in LANGS13 {
        assert!(report.contains(&format!("{lang} 2 ")), "{lang} missing in {report}");
    }

    let second = p.ok(&["run", &recipe]);
    assert!(ran(&second).is_empty(), "second run executed instances:\n{second}");
    let plan = p.plan(&recipe, &[]);
    assert_eq!(plan["summary"]["cached"], 92);
    assert_eq!(plan["summary"]["run"], 0);
    assert!(plan["instances"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["action"] == "cached"));
}

#[test]
fn setting_one_languages_parameter_reruns_only_its_chain() {
    let p = Project::new();
    let recipe = commands13(&p);
    p.ok(&["run", &recipe]);
    let set = "stages.count@sw.with.env={MODE: words}";
    let plan = p.plan(&recipe, &["--set", set]);
    let mut expected = vec!["count@sw", "stats@sw", "summary@sw", "report"];
    let mut got = to_run(&plan);
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
    assert_eq!(
        reasons(&plan, "count@sw"),
        vec!["params changed: with.env.MODE lines → words"]
    );
    assert_eq!(reasons(&plan, "stats@sw"), vec!["upstream changed: count@sw"]);

    let out = p.ok(&["run", &recipe, "--set", set]);
    let mut ran_now = ran(&out);
    ran_now.sort();
    assert_eq!(ran_now, expected);
    // Going back to the old value finds the old artifacts.
    assert!(to_run(&p.plan(&recipe, &[])).is_empty());
}

#[test]
fn editing_an_input_file_reruns_dependents_and_undoing_reuses_old_artifacts() {
    let p = Project::new();
    p.write("data/a.txt", "alpha\n");
    p.write("data/b.txt", "beta\n");
    p.write(
        "r.yaml",
        r#"
name: files
stages:
  upper:
    kind: command
    foreach: [a, b]
    needs: { src: "data/${item}.txt" }
    with: { run: 'tr a-z A-Z < "$IN_SRC" > "$OUT_OUT"' }
  both:
    kind: command
    needs: { parts: upper }
    with: { run: 'cat $IN_PARTS > "$OUT_OUT"' }
"#,
    );
    p.ok(&["run", "r.yaml"]);
    p.write("data/a.txt", "alpha, edited\n");
    let plan = p.plan("r.yaml", &[]);
    let mut run = to_run(&plan);
    run.sort();
    assert_eq!(run, vec!["both", "upper@a"]);
    assert_eq!(reasons(&plan, "upper@a"), vec!["input file changed: data/a.txt"]);
    let out = p.ok(&["run", "r.yaml"]);
    assert!(ran(&out).contains(&"both".to_string()));

    // Same bytes as before, new mtime: content decides, so nothing runs.
    std::thread::sleep(std::time::Duration::from_millis(20));
    p.write("data/a.txt", "alpha\n");
    let plan = p.plan("r.yaml", &[]);
    assert!(to_run(&plan).is_empty(), "{plan:#}");
}

#[test]
fn force_reruns_only_what_is_named() {
    let p = Project::new();
    let recipe = commands13(&p);
    p.ok(&["run", &recipe]);
    let plan = p.plan(&recipe, &["--force", "clean@vi"]);
    assert_eq!(to_run(&plan), vec!["clean@vi"]);
    assert_eq!(reasons(&plan, "clean@vi"), vec!["forced"]);
    let out = p.ok(&["run", &recipe, "--force", "clean@vi"]);
    assert_eq!(ran(&out), vec!["clean@vi"]);
}

#[test]
fn only_runs_the_named_instance_and_what_it_needs() {
    let p = Project::new();
    let recipe = commands13(&p);
    let out = p.ok(&["run", &recipe, "--only", "count@hi"]);
    let mut got = ran(&out);
    got.sort();
    assert_eq!(got, vec!["clean@hi", "count@hi", "fetch@hi"]);
    let bad = p.run(&["run", &recipe, "--only", "count@xx"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no instance or stage named `count@xx`"));
}

#[test]
fn code_version_and_missing_output_are_explained() {
    let p = Project::new();
    p.write(
        "r.yaml",
        "stages:\n  one:\n    kind: command\n    with: { run: 'echo hi > \"$OUT_OUT\"' }\n",
    );
    let plan = p.plan("r.yaml", &[]);
    assert_eq!(reasons(&plan, "one"), vec!["output missing (no earlier run)"]);
    p.ok(&["run", "r.yaml"]);
    let fp = plan["instances"][0]["fingerprint"].as_str().unwrap().to_string();
    std::fs::remove_dir_all(p.path(&format!(".babelflow/artifacts/{fp}"))).unwrap();
    assert_eq!(reasons(&p.plan("r.yaml", &[]), "one"), vec!["output missing"]);
}
