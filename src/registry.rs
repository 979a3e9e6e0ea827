//! The stage kinds this build knows. A new kind is one line here.

use std::collections::BTreeMap;
use std::sync::Arc;

use babelflow_stage::StageKind;

pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn StageKind>>,
    /// The model backends compiled into this build (`cpu` always), so a
    /// recipe asking for another is refused at validation.
    backends: Vec<&'static str>,
}

impl Registry {
    /// Every kind compiled into babelflow.
    pub fn builtin() -> Self {
        let mut registry = Registry {
            kinds: BTreeMap::new(),
            backends: babelflow_model::device::compiled(),
        };
        registry.add(Arc::new(babelflow_command::CommandKind));
        for kind in babelflow_corpus::kinds() {
            registry.add(kind);
        }
        for kind in babelflow_tokens::kinds() {
            registry.add(kind);
        }
        for kind in babelflow_vocab::kinds() {
            registry.add(kind);
        }
        for kind in babelflow_model::kinds() {
            registry.add(kind);
        }
        for kind in babelflow_train::kinds() {
            registry.add(kind);
        }
        for kind in babelflow_evaluate::kinds() {
            registry.add(kind);
        }
        for kind in babelflow_export::kinds() {
            registry.add(kind);
        }
        for kind in babelflow_report::kinds() {
            registry.add(kind);
        }
        registry
    }

    pub fn add(&mut self, kind: Arc<dyn StageKind>) {
        self.kinds.insert(kind.name(), kind);
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn StageKind>> {
        self.kinds.get(name).cloned()
    }

    pub fn backends(&self) -> &[&'static str] {
        &self.backends
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.keys().copied()
    }

    pub fn kinds(&self) -> impl Iterator<Item = &Arc<dyn StageKind>> {
        self.kinds.values()
    }
}

#[cfg(test)]
mod tests {
    use super::Registry;

    /// A default is JSON text; one that does not parse or has the wrong type
    /// breaks every recipe that leaves the parameter out.
    #[test]
    fn every_parameter_default_parses_and_has_its_declared_type() {
        for kind in Registry::builtin().kinds() {
            for p in kind.params() {
                let Some(text) = p.default else { continue };
                let value: serde_json::Value = serde_json::from_str(text)
                    .unwrap_or_else(|e| panic!("{}.{}: default {text:?} is not JSON: {e}", kind.name(), p.name));
                if let Err(e) = p.ty.coerce(&value) {
                    panic!("{}.{}: default {text}: {e}", kind.name(), p.name);
                }
            }
        }
    }
}
