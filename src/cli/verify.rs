//! `babelflow verify`: rehash every artifact against its manifest's record.

use std::path::PathBuf;
use std::process::ExitCode;

use babelflow::store::integrity::{self, Verdict};
use babelflow::store::Store;

use super::EXIT_ERROR;

pub fn verify(store: Option<PathBuf>, dry_run: bool) -> anyhow::Result<ExitCode> {
    let root = store
        .or_else(|| std::env::var_os("BABELFLOW_STORE").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(".babelflow"));
    let store = Store::at(&root)?;
    if !store.exists() {
        eprintln!(
            "error: {} is not a babelflow store (no artifacts/ folder)",
            root.display()
        );
        return Ok(ExitCode::from(EXIT_ERROR));
    }
    // Moving artifacts aside while a run reads them would pull them from
    // under it: take the store's lock, as a run does.
    let _lock = (!dry_run)
        .then(|| store.lock(true, || eprintln!("waiting for the run that holds the store…")))
        .transpose()?;
    let (mut intact, mut unverifiable, mut damaged) = (0usize, 0usize, 0usize);
    for fp in store.artifacts()? {
        let dir = store.artifact_dir(&fp);
        match integrity::verify(&dir) {
            Verdict::Intact { .. } => intact += 1,
            Verdict::Unverifiable => {
                unverifiable += 1;
                println!("{fp}: no file record (made by an older babelflow); not checked");
            }
            Verdict::Damaged(problems) => {
                damaged += 1;
                let instance = babelflow::store::MadeFor::read(&dir).map_or_else(|| "?".into(), |m| m.instance);
                println!("{fp} ({instance}): damaged: {}", problems.join("; "));
                if !dry_run {
                    let aside = store.set_aside(&fp)?;
                    println!("  moved to {}; the next run rebuilds it", aside.display());
                }
            }
        }
    }
    println!("{intact} intact, {damaged} damaged, {unverifiable} without a record");
    Ok(if damaged > 0 {
        ExitCode::from(EXIT_ERROR)
    } else {
        ExitCode::SUCCESS
    })
}
