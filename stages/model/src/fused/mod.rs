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

pub mod adamw;
pub mod attention;
mod matrix;
pub mod nll;
pub mod norm;
pub mod projection;
pub mod rms_norm;
pub mod rope;
mod row_kernels;
pub mod swiglu;

use burn::tensor::{DType, Shape, Tensor, TensorData};
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, NodeGuard, Ops, OpsKind};
use burn_autodiff::{Autodiff, NodeId};
use burn_backend::tensor::FloatTensor;
use burn_flex::{Flex, FlexTensor};

/// The result of a fused op, or its input back when the op does not apply.
pub enum Fused<Output, Input> {
    Done(Output),
    NotApplicable(Input),
}

impl<Output, Input> Fused<Output, Input> {
    /// The fused result, or `composed(input)` where the fused op does not apply.
    pub fn or_else(self, composed: impl FnOnce(Input) -> Output) -> Output {
        match self {
            Fused::Done(output) => output,
            Fused::NotApplicable(input) => composed(input),
        }
    }

    fn map_input<Other>(self, f: impl FnOnce(Input) -> Other) -> Fused<Output, Other> {
        match self {
            Fused::Done(output) => Fused::Done(output),
            Fused::NotApplicable(input) => Fused::NotApplicable(f(input)),
        }
    }

    /// The fused result; panics where the op did not apply (tests that must
    /// exercise the kernel, not the composed fallback).
    #[cfg(test)]
    pub(crate) fn done(self) -> Output {
        match self {
            Fused::Done(output) => output,
            Fused::NotApplicable(_) => panic!("flex f32 tensors take the fused path"),
        }
    }
}

/// A float tensor that autodiff tracks, on `flex`.
type Tracked = FloatTensor<Autodiff<Flex>>;

/// [`on_flex_all`] for an op of one tensor.
fn on_flex<const D: usize, const E: usize>(
    input: Tensor<D>,
    tracked: impl FnOnce(FlexTensor, NodeGuard) -> Tracked,
    plain: impl FnOnce(&FlexTensor) -> FlexTensor,
) -> Fused<Tensor<E>, Tensor<D>> {
    on_flex_all(
        [input],
        |[input], [guard]| tracked(input, guard),
        |[input]| plain(input),
    )
    .map_input(|[input]| input)
}

/// Runs `tracked` on the contiguous primitives of f32 flex tensors that
/// autodiff tracks, with their graph nodes; `plain` on the contiguous
/// primitives of untracked ones; or hands the inputs back.
fn on_flex_all<const N: usize, const D: usize, const E: usize>(
    inputs: [Tensor<D>; N],
    tracked: impl FnOnce([FlexTensor; N], [NodeGuard; N]) -> Tracked,
    plain: impl FnOnce([&FlexTensor; N]) -> FlexTensor,
) -> Fused<Tensor<E>, [Tensor<D>; N]> {
    if inputs.iter().any(|t| t.dtype() != DType::F32) {
        return Fused::NotApplicable(inputs);
    }
    let tracked_by_autodiff = |t: &Tensor<D>| t.clone().try_into_primitive::<Autodiff<Flex>>().is_ok();
    if inputs.iter().all(tracked_by_autodiff) {
        // By value: a clone kept here would share the buffers that the ops
        // which write into their inputs need to hold alone.
        let parts = inputs.map(|t| {
            t.try_into_primitive::<Autodiff<Flex>>()
                .expect("checked above")
                .into_parts()
        });
        let (primitives, guards) = unzip(parts);
        let output = tracked(primitives.map(contiguous), guards);
        return Fused::Done(Tensor::from_primitive::<Autodiff<Flex>>(output));
    }
    let primitives = inputs
        .each_ref()
        .map(|t| t.clone().try_into_primitive::<Flex>().ok().map(|p| p.to_contiguous()));
    if primitives.iter().all(Option::is_some) {
        let primitives = primitives.each_ref().map(|p| p.as_ref().expect("all checked above"));
        return Fused::Done(Tensor::from_primitive::<Flex>(plain(primitives)));
    }
    Fused::NotApplicable(inputs)
}

/// `[(a, b); N]` → `([a; N], [b; N])`.
fn unzip<A, B, const N: usize>(pairs: [(A, B); N]) -> ([A; N], [B; N]) {
    let mut seconds = Vec::with_capacity(N);
    let firsts = pairs.map(|(a, b)| {
        seconds.push(b);
        a
    });
    let Ok(seconds) = <[B; N]>::try_from(seconds) else {
        unreachable!("one per pair")
    };
    (firsts, seconds)
}

/// The tensor itself when contiguous (so an op that holds the only
/// reference may write into it), else a contiguous copy.
fn contiguous(tensor: FlexTensor) -> FlexTensor {
    if tensor.is_contiguous() {
        tensor
    } else {
        tensor.to_contiguous()
    }
}

/// Puts `op` into the autodiff graph with `output`; `saved` (what its
/// backward reads) is built only when a parent needs a gradient.
fn record<Op: Backward<Flex, N>, const N: usize>(
    op: Op,
    parents: [NodeGuard; N],
    output: FlexTensor,
    saved: impl FnOnce() -> Op::State,
) -> Tracked {
    match op.prepare::<NoCheckpointing>(parents).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(saved(), output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}

/// The ids of an op's parents, `None` where a parent wants no gradient.
fn parent_ids<S, const N: usize>(ops: &Ops<S, N>) -> [Option<NodeId>; N] {
    ops.parents.each_ref().map(|parent| parent.as_ref().map(|node| node.id))
}

/// Hands each parent that wants a gradient its own (for a backward that
/// computes all its inputs' gradients in one pass).
fn register_all<const N: usize>(parents: [Option<NodeId>; N], grads: &mut Gradients, values: [FlexTensor; N]) {
    for (parent, value) in parents.into_iter().zip(values) {
        if let Some(id) = parent {
            grads.register::<Flex>(id, value);
        }
    }
}

/// A contiguous f32 tensor the caller alone holds (copied when shared or a
/// view), so an op can write its result into it.
fn into_owned(mut tensor: FlexTensor) -> FlexTensor {
    let len = tensor.layout().shape().num_elements();
    let whole = tensor.is_contiguous() && tensor.layout().start_offset() == 0;
    if whole
        && tensor
            .try_storage_mut::<f32>()
            .is_some_and(|values| values.len() == len)
    {
        return tensor;
    }
    let values = f32s(&tensor.to_contiguous()).to_vec();
    flex_tensor(values, tensor.layout().shape().clone())
}

/// The values of a contiguous f32 flex tensor.
fn f32s(tensor: &FlexTensor) -> &[f32] {
    tensor
        .as_slice::<f32>()
        .expect("fused kernels see contiguous f32 tensors")
}

fn flex_tensor(values: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}
