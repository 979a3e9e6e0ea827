//! babelflow's engine: recipes, the instance graph, the content-addressed
//! store, planning and scheduling. Stage kinds live in `stages/` and are
//! reached only through [`registry::Registry`].

pub mod diagnostics;
pub mod distributed;
pub mod engine;
pub mod executor;
pub mod graph;
pub mod recipe;
pub mod registry;
pub mod store;
