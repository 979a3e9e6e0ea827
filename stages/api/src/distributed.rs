//! The processes one stage instance runs in, and what they do together.
//!
//! A data-parallel training run is several processes (ranks) running the
//! same instance; they agree through a [`Collective`]: sums of gradient
//! buffers, a barrier, the maximum of a flag. Kinds see it as
//! `ctx.world`; outside a launcher it is [`SingleProcess`], whose
//! operations do nothing, so a kind written for many ranks runs unchanged
//! on one. The engine provides an MPI-backed one when it was built with the
//! `mpi` feature and started by `mpirun` or `srun`.
//!
//! Contract: every rank calls the same operations in the same order with
//! buffers of the same length (MPI's rule for collectives); a rank that
//! skips one leaves the others waiting.

use std::sync::Arc;

pub trait Collective: Send + Sync {
    /// This process's rank, 0-based; rank 0 writes what the run writes.
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// The rank among the processes on this machine (which GPU is mine).
    fn local_rank(&self) -> usize;
    /// Element-wise sum over ranks, in place, the same result on every rank.
    fn sum_f32(&self, values: &mut [f32]);
    fn sum_f64(&self, values: &mut [f64]);
    /// Element-wise maximum over ranks, in place.
    fn max_f64(&self, values: &mut [f64]);
    /// Returns when every rank has called it.
    fn barrier(&self);
    /// What the processes are and who started them ("mpi: 2 ranks from
    /// OMPI_COMM_WORLD_SIZE"), for logs and manifests.
    fn describe(&self) -> String;

    fn is_root(&self) -> bool {
        self.rank() == 0
    }
    /// True on every rank when it is true on any (a cancel, an error).
    fn any(&self, flag: bool) -> bool {
        let mut v = [if flag { 1.0 } else { 0.0 }];
        self.max_f64(&mut v);
        v[0] > 0.0
    }
}

/// One process, alone: every collective is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn sum_f32(&self, _: &mut [f32]) {}
    fn sum_f64(&self, _: &mut [f64]) {}
    fn max_f64(&self, _: &mut [f64]) {}
    fn barrier(&self) {}
    fn describe(&self) -> String {
        "one process".into()
    }
}

pub fn single_process() -> Arc<dyn Collective> {
    Arc::new(SingleProcess)
}

/// Rows `[start, end)` of a global batch of `rows` that `rank` of `world`
/// trains on: contiguous, sizes differing by at most one, every row once.
pub fn shard(rows: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    (rows * rank / world)..(rows * (rank + 1) / world)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_row_once_for_any_world() {
        for (rows, world) in [(8, 1), (8, 2), (8, 3), (7, 2), (5, 5), (16, 4)] {
            let mut seen = Vec::new();
            for rank in 0..world {
                let r = shard(rows, rank, world);
                assert!(
                    r.len() + 1 >= rows / world && r.len() <= rows.div_ceil(world),
                    "{rows}/{world}: {r:?}"
                );
                seen.extend(r);
            }
            assert_eq!(seen, (0..rows).collect::<Vec<_>>(), "{rows} rows over {world}");
        }
    }
}
