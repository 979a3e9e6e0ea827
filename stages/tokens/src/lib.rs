use std::sync::Arc;

use babelflow_stage::StageKind;

/// The stage kinds this crate provides.
pub fn kinds() -> Vec<Arc<dyn StageKind>> {
    Vec::new()
}
