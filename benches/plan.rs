//! How long `plan` takes to decide that a fully cached 13 × 7 recipe has
//! nothing to do: load + validate + fingerprint + store lookups.
//! Run: `cargo bench --bench plan`. Target: under 100 ms.

use std::sync::Arc;

use babelflow::engine::progress::Progress;
use babelflow::engine::scheduler::SchedulerOptions;
use babelflow::engine::{Action, Pipeline, Selection};
use babelflow::registry::Registry;
use babelflow::store::Store;
use babelflow_stage::CancelFlag;
use criterion::{criterion_group, criterion_main, Criterion};

fn cached_plan(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("commands-13.yaml");
    let text =
        std::fs::read_to_string(babelflow_stage::testing::package_dir().join("pipelines/examples/commands-13.yaml"))
            .unwrap();
    std::fs::write(&recipe, text).unwrap();
    let registry = Registry::builtin();
    let pipeline = Pipeline::load(&recipe, &[], &registry).unwrap();
    let store = Arc::new(Store::open(&pipeline.default_store(None)).unwrap());
    let options = SchedulerOptions {
        jobs: 2,
        keep_going: false,
        executor: Arc::new(babelflow::executor::Executor::local()),
    };
    pipeline
        .run(
            store.clone(),
            &Selection::default(),
            &options,
            &CancelFlag::new(),
            Arc::new(Progress::new()),
            true,
        )
        .unwrap();

    c.bench_function("plan: fully cached 13x7 recipe (load + validate + plan)", |b| {
        b.iter(|| {
            let pipeline = Pipeline::load(&recipe, &[], &registry).unwrap();
            let planned = pipeline.plan(&store, &Selection::default()).unwrap();
            assert!(planned.iter().all(|p| p.action == Action::Cached));
            planned.len()
        })
    });
}

criterion_group!(benches, cached_plan);
criterion_main!(benches);
