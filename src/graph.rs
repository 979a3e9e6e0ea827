//! The instance DAG: dependencies, a topological order, cycle reports, and
//! drawings for `babelflow graph`.

use std::fmt::Write;

use crate::diagnostics::Diagnostics;
use crate::recipe::expand::Source;
use crate::recipe::{Instance, RecipeSource};

pub struct Graph {
    pub instances: Vec<Instance>,
    /// `deps[i]`: the instances `i` reads from, deduplicated, ascending.
    pub deps: Vec<Vec<usize>>,
    /// Every instance after all of its dependencies.
    pub order: Vec<usize>,
}

impl Graph {
    pub fn new(source: &RecipeSource, instances: Vec<Instance>) -> Result<Graph, Diagnostics> {
        let deps: Vec<Vec<usize>> = instances
            .iter()
            .map(|inst| {
                let mut d: Vec<usize> = inst
                    .inputs
                    .iter()
                    .flat_map(|b| &b.sources)
                    .filter_map(|s| match s {
                        Source::Artifact { instance, .. } => Some(*instance),
                        Source::File { .. } => None,
                    })
                    .collect();
                d.sort_unstable();
                d.dedup();
                d
            })
            .collect();
        match topological_order(&deps) {
            Ok(order) => Ok(Graph { instances, deps, order }),
            Err(cycle) => {
                let names: Vec<&str> = cycle.iter().map(|&i| instances[i].name.as_str()).collect();
                let first = &instances[cycle[0]];
                let mut diags = Diagnostics::default();
                diags.push(source.diag(
                    first.span,
                    format!("the stages form a cycle: {}", names.join(" → ")),
                    Some("an instance cannot need its own output, directly or through others".into()),
                ));
                Err(diags)
            }
        }
    }

    pub fn find(&self, name: &str) -> Option<usize> {
        self.instances.iter().position(|i| i.name == name)
    }

    /// `i` and everything downstream of it.
    pub fn downstream(&self, i: usize) -> Vec<bool> {
        let mut marked = vec![false; self.instances.len()];
        marked[i] = true;
        for &j in &self.order {
            if self.deps[j].iter().any(|&d| marked[d]) {
                marked[j] = true;
            }
        }
        marked
    }

    /// `i` and everything it depends on.
    pub fn upstream(&self, i: usize) -> Vec<bool> {
        let mut marked = vec![false; self.instances.len()];
        marked[i] = true;
        for &j in self.order.iter().rev() {
            if marked[j] {
                for &d in &self.deps[j] {
                    marked[d] = true;
                }
            }
        }
        marked
    }

    pub fn to_dot(&self) -> String {
        let mut out = String::from("digraph babelflow {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n");
        for inst in &self.instances {
            let _ = writeln!(
                out,
                "  \"{}\" [label=\"{}\\n({})\"];",
                inst.name,
                inst.name,
                inst.kind.name()
            );
        }
        for (i, deps) in self.deps.iter().enumerate() {
            for &d in deps {
                let _ = writeln!(
                    out,
                    "  \"{}\" -> \"{}\";",
                    self.instances[d].name, self.instances[i].name
                );
            }
        }
        out.push_str("}\n");
        out
    }

    pub fn to_mermaid(&self) -> String {
        let mut out = String::from("flowchart LR\n");
        for (i, inst) in self.instances.iter().enumerate() {
            let _ = writeln!(out, "  n{i}[\"{}<br/>({})\"]", inst.name, inst.kind.name());
        }
        for (i, deps) in self.deps.iter().enumerate() {
            for &d in deps {
                let _ = writeln!(out, "  n{d} --> n{i}");
            }
        }
        out
    }
}

/// Kahn's order with ties broken by declaration order; on a cycle, returns
/// the instances of one cycle in dependency order (first repeated at the end).
fn topological_order(deps: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    let n = deps.len();
    let mut indegree: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependents[d].push(i);
        }
    }
    let mut ready: std::collections::BTreeSet<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &j in &dependents[i] {
            indegree[j] -= 1;
            if indegree[j] == 0 {
                ready.insert(j);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Walk dependencies from any unfinished node until one repeats.
    let start = (0..n).find(|&i| indegree[i] > 0).unwrap_or(0);
    let mut path = vec![start];
    let mut current = start;
    loop {
        let next = deps[current]
            .iter()
            .copied()
            .find(|&d| indegree[d] > 0)
            .unwrap_or(start);
        if let Some(pos) = path.iter().position(|&p| p == next) {
            let mut cycle: Vec<usize> = path[pos..].to_vec();
            cycle.reverse();
            cycle.push(cycle[0]);
            return Err(cycle);
        }
        path.push(next);
        current = next;
    }
}

#[cfg(test)]
mod tests {
    use super::topological_order;

    #[test]
    fn orders_dependencies_first() {
        let deps = vec![vec![1], vec![], vec![0, 1]];
        assert_eq!(topological_order(&deps).unwrap(), vec![1, 0, 2]);
    }

    #[test]
    fn reports_the_cycle() {
        let deps = vec![vec![2], vec![0], vec![1], vec![]];
        let cycle = topological_order(&deps).unwrap_err();
        assert_eq!(cycle.first(), cycle.last());
        assert_eq!(cycle.len(), 4);
    }
}
