//! The ranks' collective over MPI (rsmpi): host-staged all-reduce on `f32`
//! and `f64` buffers, a barrier. MPI is initialised `Serialized`: any
//! thread may call, one at a time (the mutex), which is all the training
//! loop needs and what every MPI supports.

use std::sync::Mutex;

use babelflow_stage::Collective;
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::CommunicatorCollectives;
use mpi::Threading;

use super::Launch;

pub struct MpiWorld {
    /// Finalises MPI when dropped, after the communicator.
    comm: Mutex<SimpleCommunicator>,
    _universe: Universe,
    rank: usize,
    size: usize,
    local_rank: usize,
    source: &'static str,
}

// SAFETY: MPI handles are plain integers or pointers into the MPI library;
// with `Threading::Serialized` (checked at init) MPI may be called from any
// thread as long as calls do not overlap, which the mutex guarantees.
unsafe impl Send for MpiWorld {}
unsafe impl Sync for MpiWorld {}

impl MpiWorld {
    pub fn init(launch: &Launch) -> Result<MpiWorld, String> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or("MPI was already initialised in this process")?;
        if threading < Threading::Serialized {
            return Err(format!(
                "this MPI offers only {threading:?} threading; babelflow needs Serialized"
            ));
        }
        let comm = universe.world();
        let (rank, size) = (comm.rank() as usize, comm.size() as usize);
        if (rank, size) != (launch.rank, launch.world_size) {
            return Err(format!(
                "{} says rank {} of {}, but MPI's world is rank {rank} of {size}: was babelflow started by a launcher of another MPI (srun --mpi=pmix vs pmi2, or mpirun of MPICH for an OpenMPI build)?",
                launch.source, launch.rank, launch.world_size
            ));
        }
        Ok(MpiWorld {
            comm: Mutex::new(comm),
            _universe: universe,
            rank,
            size,
            local_rank: launch.local_rank,
            source: launch.source,
        })
    }

    fn with<R>(&self, f: impl FnOnce(&SimpleCommunicator) -> R) -> R {
        let comm = self.comm.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&comm)
    }
}

impl Collective for MpiWorld {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.size
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }
    // rsmpi has no MPI_IN_PLACE, so each reduction sends a copy: one
    // bucket (`stages/train/src/sync.rs`) at most.
    fn sum_f32(&self, values: &mut [f32]) {
        let send = values.to_vec();
        self.with(|c| c.all_reduce_into(&send[..], values, SystemOperation::sum()));
    }
    fn sum_f64(&self, values: &mut [f64]) {
        let send = values.to_vec();
        self.with(|c| c.all_reduce_into(&send[..], values, SystemOperation::sum()));
    }
    fn max_f64(&self, values: &mut [f64]) {
        let send = values.to_vec();
        self.with(|c| c.all_reduce_into(&send[..], values, SystemOperation::max()));
    }
    fn barrier(&self) {
        self.with(|c| c.barrier());
    }
    fn describe(&self) -> String {
        format!("MPI, rank {} of {} (from {})", self.rank, self.size, self.source)
    }
}
