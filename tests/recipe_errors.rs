//! Every recipe mistake is reported before anything runs, all in one pass,
//! each at the file:line:column where the user has to look.

mod common;

use common::Project;

/// Runs `plan` on a recipe text; returns (exit code, stderr).
fn check(text: &str, extra: &[&str]) -> (i32, String) {
    let p = Project::new();
    p.write("r.yaml", text);
    let mut args = vec!["plan", "r.yaml"];
    args.extend_from_slice(extra);
    let out = p.run(&args);
    assert!(!p
        .path(".babelflow/artifacts")
        .read_dir()
        .map(|mut d| d.next().is_some())
        .unwrap_or(false));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_error_at(stderr: &str, line_col: &str, message: &str) {
    let wanted = format!("r.yaml:{line_col}: error: {message}");
    assert!(
        stderr.lines().any(|l| l.ends_with(&wanted[..]) || l.contains(&wanted)),
        "expected `{wanted}` in:\n{stderr}"
    );
}

#[test]
fn malformed_yaml_names_the_line() {
    let (code, err) = check("name: x\nstages:\n  a: [1,\n  b: 2\n", &[]);
    assert_eq!(code, 2);
    assert!(err.contains("r.yaml:4:"), "{err}");
    assert!(err.contains("malformed YAML"), "{err}");
}

const MANY_MISTAKES: &str = r#"name: mistakes
vars:
  langs: [sw, vi]
  one: sw
stages:
  a:
    kind: comand
  b:
    kind: command
    foreach: ${vars.one}
    with: { run: "true" }
  c:
    kind: command
    foreach: ${vars.langs}
    needs: { x: "nope@${item}", y: "d@zz", z: "d:missing" }
    with: { run: "true", outptus: [a], env: 5 }
  d:
    kind: command
    foreach: [sw, sw]
    with: { run: "true" }
  e:
    kind: command
    needs: { x: f }
    with: { run: "true" }
  f:
    kind: command
    needs: { x: e }
    with: { run: "true" }
  g:
    kind: command
    bakend: cpu
    with: { run: "true", outputs: 3 }
"#;

#[test]
fn all_mistakes_are_reported_in_one_pass_each_at_its_place() {
    let (code, err) = check(MANY_MISTAKES, &[]);
    assert_eq!(code, 2, "{err}");
    assert_error_at(&err, "7:11", "unknown stage kind `comand`");
    assert!(err.contains("did you mean `command`?"));
    assert_error_at(&err, "10:14", "`foreach` must be a list, found \"sw\"");
    assert_error_at(
        &err,
        "15:17",
        "input `x` refers to stage `nope`, which the recipe does not have",
    );
    assert_error_at(&err, "16:26", "unknown parameter `outptus` for kind `command`");
    assert!(err.contains("did you mean `outputs`?"));
    assert_error_at(
        &err,
        "16:45",
        "parameter `env` of kind `command`: expected a mapping of names to strings, found the number 5",
    );
    assert_error_at(&err, "19:19", "`foreach` lists `sw` twice");
    assert_error_at(&err, "25:3", "the stages form a cycle: f → e → f");
    assert_error_at(&err, "31:5", "unknown key `bakend` in stage `g`");
    assert_error_at(
        &err,
        "32:35",
        "parameter `outputs` of kind `command`: expected a list of strings, found the number 3",
    );
    assert!(err.contains("nothing was run"));
}

#[test]
fn references_to_missing_instances_and_outputs_are_named() {
    let text = r#"stages:
  tok:
    kind: command
    foreach: [sw, vi]
    with: { run: "true" }
  use:
    kind: command
    needs: { a: "tok@hi", b: "tok@sw:vocab", c: "tokk" }
    with: { run: "true" }
"#;
    let (code, err) = check(text, &[]);
    assert_eq!(code, 2);
    assert_error_at(
        &err,
        "8:17",
        "input `a` refers to instance `tok@hi`, which stage `tok` does not produce",
    );
    assert!(err.contains("did you mean `tok@vi`?"), "{err}");
    assert_error_at(&err, "8:30", "input `b`: instance `tok@sw` has no output `vocab`");
    assert_error_at(&err, "8:49", "input `c` refers to stage `tokk`");
    assert!(err.contains("did you mean `tok`?"), "{err}");
}

#[test]
fn missing_files_required_params_and_interpolation_errors() {
    let text = r#"vars: { langs: [sw] }
stages:
  a:
    kind: command
    foreach: ${vars.langs}
    needs: { src: "data/${item}/*.txt" }
    with: { env: { X: "${vars.lang}" } }
"#;
    let (code, err) = check(text, &[]);
    assert_eq!(code, 2);
    assert_error_at(&err, "7:23", "`${vars.lang}`: no variable `lang`");
    assert!(err.contains("did you mean `langs`?"), "{err}");
}

#[test]
fn matrix_expands_the_cross_product_and_rejects_a_non_list_axis() {
    let p = Project::new();
    p.write(
        "m.yaml",
        r#"stages:
  train:
    kind: command
    matrix: { lang: [sw, vi], vocab: [keep, ext] }
    with: { run: 'echo ${matrix.lang} ${matrix.vocab} > "$OUT_OUT"' }
"#,
    );
    let plan = p.plan("m.yaml", &[]);
    let names = common::instance_names(&plan);
    assert_eq!(
        names,
        vec!["train@sw-keep", "train@sw-ext", "train@vi-keep", "train@vi-ext"]
    );

    let (code, err) = check(
        "stages:\n  t:\n    kind: command\n    matrix: { lang: sw }\n    with: { run: 'true' }\n",
        &[],
    );
    assert_eq!(code, 2);
    assert_error_at(&err, "4:21", "matrix axis `lang` must be a list");
}

#[test]
fn bad_overrides_point_at_the_set_argument() {
    let (code, err) = check(
        "stages:\n  a:\n    kind: command\n    with: { run: 'true' }\n",
        &["--set", "stages.a.with.runn=1", "--set", "nonsense"],
    );
    assert_eq!(code, 2);
    assert!(err.contains("--set #2 (nonsense): error: missing `=`"), "{err}");
    let (_, err) = check(
        "stages:\n  a:\n    kind: command\n    with: { run: 'true' }\n",
        &["--set", "stages.a.with.runn=1"],
    );
    assert!(
        err.contains("--set #1 (stages.a.with.runn=1): error: unknown parameter `runn`"),
        "{err}"
    );
}

#[test]
fn yaml_anchors_and_merge_keys_work_in_recipes() {
    let p = Project::new();
    p.write(
        "a.yaml",
        r#"common: &common
  run: 'echo "$GREETING" > "$OUT_OUT"'
  env: { GREETING: hello }
stages:
  one:
    kind: command
    with: *common
  two:
    kind: command
    with:
      <<: *common
      env: { GREETING: bye }
"#,
    );
    let (_, err) = check(&std::fs::read_to_string(p.path("a.yaml")).unwrap(), &[]);
    assert!(err.contains("unknown key `common` in recipe"), "{err}");
    // Anchors belong under `vars` (which may hold anything).
    p.write(
        "a.yaml",
        r#"vars:
  common: &common
    run: 'echo "$GREETING" > "$OUT_OUT"'
    env: { GREETING: hello }
stages:
  one:
    kind: command
    with: *common
  two:
    kind: command
    with:
      <<: *common
      env: { GREETING: bye }
"#,
    );
    p.ok(&["run", "a.yaml"]);
    let plan = p.plan("a.yaml", &[]);
    assert_eq!(plan["summary"]["cached"], 2);
    let outputs: Vec<String> = std::fs::read_dir(p.path(".babelflow/artifacts"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path().join("out")).unwrap())
        .collect();
    assert!(
        outputs.contains(&"hello\n".to_string()) && outputs.contains(&"bye\n".to_string()),
        "{outputs:?}"
    );
}
