//! Operations burn composes from many element-wise passes, written as one
//! pass each with their own backward, for burn's CPU backend (`flex`).
//!
//! Why: on `flex` every element-wise op is a single-threaded pass with a
//! scalar `expf` per element, and autodiff recomputes `exp` in the backward
//! pass. For the vocabulary log-softmax, the attention softmax and SwiGLU that was
//! about a third of a training step of the bench's d256 model. These kernels
//! spread rows over the rayon pool and use a vectorised `exp`
//! ([`row_kernels`]). Other backends, other dtypes and a checkpointing
//! autodiff get [`Fused::NotApplicable`] and take the composed path.

pub mod causal_softmax;
pub mod nll;
mod row_kernels;
pub mod swiglu;

use burn_autodiff::Autodiff;
use burn_backend::tensor::FloatTensor;
use burn_flex::Flex;

/// The result of a fused op, or its input back when the op does not apply.
pub enum Fused<Output, Input> {
    Done(Output),
    NotApplicable(Input),
}

/// A float tensor that autodiff tracks, on `flex`.
type Tracked = FloatTensor<Autodiff<Flex>>;
