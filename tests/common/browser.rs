//! A real browser for the report: Debian's chromium, headless. It renders a
//! page to a PNG and hands back what the page wrote to its console.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn find_chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

/// The browser, or `None` (with a note) where it is not installed; in CI
/// (`CI=true`, where `.ci/run` installs it) a missing browser is a failure.
pub fn chromium() -> Option<PathBuf> {
    let found = find_chromium();
    if found.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "chromium is not installed; .ci/run installs it (apt-get install chromium)"
        );
        eprintln!("skipped the browser check: no chromium on PATH (apt-get install chromium)");
    }
    found
}

/// Opens `page` headless at 1280×`height`, writes a screenshot to `png`, and
/// returns the page's console messages (errors and logs alike).
pub fn render(browser: &Path, page: &Path, png: &Path, height: u32) -> Vec<String> {
    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}", page.canonicalize().unwrap().display());
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            &format!("--user-data-dir={}", profile.path().display()),
            &format!("--window-size=1280,{height}"),
            &format!("--screenshot={}", png.display()),
            &url,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!("chromium did not finish rendering {url} in 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = reader.join().unwrap();
    assert!(png.is_file(), "chromium wrote no screenshot of {url}:\n{log}");
    log.lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect()
}

/// Width and height from a PNG's header.
pub fn png_size(png: &Path) -> (u32, u32) {
    let bytes = std::fs::read(png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", png.display());
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}
