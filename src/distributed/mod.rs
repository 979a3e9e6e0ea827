//! Which rank this process is, read from the launcher's conventions, and
//! the [`Collective`] the ranks agree through. The training loop sees only
//! `babelflow_stage::Collective`; MPI (the `mpi` feature, rsmpi over the
//! system's OpenMPI or MPICH) lives here, in the root crate, so turning the
//! feature on rebuilds nothing but this crate.
//!
//! Order of the conventions: torchrun's `RANK`/`WORLD_SIZE`/`LOCAL_RANK`,
//! Slurm's `SLURM_PROCID`/`SLURM_NTASKS`/`SLURM_LOCALID` (inside an `srun`
//! step only: a batch script sees the job's task count, not its own),
//! OpenMPI's `OMPI_COMM_WORLD_*`, PMI's `PMI_RANK`/`PMI_SIZE` (MPICH), else
//! one process. Whatever says so, MPI's own world must agree.

#[cfg(feature = "mpi")]
mod mpi_world;

use std::sync::Arc;

use babelflow_stage::distributed::single_process;
use babelflow_stage::Collective;

/// True when this babelflow can run one instance on several processes.
pub const MPI_BUILT: bool = cfg!(feature = "mpi");

/// What the launcher said about this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    /// The variable the world size came from (`WORLD_SIZE`, `SLURM_NTASKS`...).
    pub source: &'static str,
}

const CONVENTIONS: &[(&str, &str, &str)] = &[
    ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
    (
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_LOCAL_RANK",
    ),
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
];

impl Launch {
    /// From an environment (`std::env::var` in a real process).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Launch, String> {
        for &(rank, size, local) in CONVENTIONS {
            // A batch script has SLURM_NTASKS but is not one of the tasks.
            if rank == "SLURM_PROCID" && var("SLURM_STEP_ID").is_none() {
                continue;
            }
            let Some(size_text) = var(size) else { continue };
            let number = |name: &str, text: &str| {
                text.trim()
                    .parse::<usize>()
                    .map_err(|_| format!("{name}={text} is not a whole number"))
            };
            let world_size = number(size, &size_text)?;
            let rank_value = match var(rank) {
                Some(t) => number(rank, &t)?,
                None => return Err(format!("{size}={size_text} is set but {rank} is not")),
            };
            if world_size == 0 || rank_value >= world_size {
                return Err(format!("{rank}={rank_value} is not a rank of {size}={world_size}"));
            }
            let local_rank = match var(local) {
                Some(t) => number(local, &t)?,
                None => 0,
            };
            return Ok(Launch {
                rank: rank_value,
                world_size,
                local_rank,
                source: size,
            });
        }
        Ok(Launch {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            source: "no launcher",
        })
    }
}

/// The world of this process: one process, or (several ranks, `mpi` built)
/// MPI's world, checked against what the launcher said. Initialises MPI
/// only for more than one rank; the returned world finalises it when the
/// last handle is dropped.
pub fn world_from_env() -> Result<Arc<dyn Collective>, String> {
    let launch = Launch::from_env(|name| std::env::var(name).ok())?;
    if launch.world_size == 1 {
        return Ok(single_process());
    }
    #[cfg(feature = "mpi")]
    {
        mpi_world::MpiWorld::init(&launch).map(|w| Arc::new(w) as Arc<dyn Collective>)
    }
    #[cfg(not(feature = "mpi"))]
    {
        Err(format!(
            "{}={} asks for {} processes, but this babelflow was built without MPI: rebuild with `--features mpi`",
            launch.source, launch.world_size, launch.world_size
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Launch, String> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Launch::from_env(|k| map.get(k).cloned())
    }

    /// The environment, and (rank, world size, local rank, source) or the error.
    type Case<'a> = (
        &'a [(&'a str, &'a str)],
        Result<(usize, usize, usize, &'a str), &'a str>,
    );

    #[test]
    fn each_launchers_convention_in_order() {
        let table: &[Case] = &[
            (&[], Ok((0, 1, 0, "no launcher"))),
            (
                &[("RANK", "1"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "1")],
                Ok((1, 4, 1, "WORLD_SIZE")),
            ),
            // torchrun's variables win over Slurm's when both are set.
            (
                &[
                    ("RANK", "0"),
                    ("WORLD_SIZE", "2"),
                    ("SLURM_PROCID", "3"),
                    ("SLURM_NTASKS", "8"),
                    ("SLURM_STEP_ID", "0"),
                ],
                Ok((0, 2, 0, "WORLD_SIZE")),
            ),
            (
                &[
                    ("SLURM_PROCID", "3"),
                    ("SLURM_NTASKS", "4"),
                    ("SLURM_LOCALID", "1"),
                    ("SLURM_STEP_ID", "0"),
                ],
                Ok((3, 4, 1, "SLURM_NTASKS")),
            ),
            // In the batch script itself (no step): one process.
            (
                &[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "4")],
                Ok((0, 1, 0, "no launcher")),
            ),
            (
                &[
                    ("OMPI_COMM_WORLD_RANK", "1"),
                    ("OMPI_COMM_WORLD_SIZE", "2"),
                    ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
                ],
                Ok((1, 2, 1, "OMPI_COMM_WORLD_SIZE")),
            ),
            (&[("PMI_RANK", "2"), ("PMI_SIZE", "3")], Ok((2, 3, 0, "PMI_SIZE"))),
            (
                &[("WORLD_SIZE", "two"), ("RANK", "0")],
                Err("WORLD_SIZE=two is not a whole number"),
            ),
            (&[("WORLD_SIZE", "2")], Err("WORLD_SIZE=2 is set but RANK is not")),
            (
                &[("WORLD_SIZE", "2"), ("RANK", "2")],
                Err("RANK=2 is not a rank of WORLD_SIZE=2"),
            ),
        ];
        for (vars, expected) in table {
            let got = launch(vars).map(|l| (l.rank, l.world_size, l.local_rank, l.source));
            assert_eq!(got, expected.map_err(str::to_string), "{vars:?}");
        }
    }
}
