//! One micro-batch's loss and gradients, whole or with activations
//! checkpointed per decoder block (`checkpoint_activations: true`).
//!
//! Checkpointed, the forward pass runs off the autodiff graph and keeps only
//! each block's input (`[batch, t, d]` per block). The backward pass then
//! goes segment by segment, top down: the head's loss is differentiated
//! with respect to the last block's output; each block is recomputed on the
//! autodiff device from its saved input and differentiated with the
//! gradient that came down from above (`Σ output · upstream`, whose gradient
//! is exactly `upstream`); the embeddings last, when they train. Only one
//! block's graph is alive at a time. The blocks run the same kernels on the
//! same inputs in both passes, so the loss is the same number and the
//! gradients differ from the whole graph's only where their contributions
//! are summed in another order (the residual branches, a tied embedding).

use babelflow_model::loss::cross_entropy;
use babelflow_model::{Llama, Rope};
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Int, Tensor};

/// Inputs, targets and loss weights of a micro-batch, on the autodiff device.
pub struct MicroBatch {
    pub inputs: Tensor<2, Int>,
    pub targets: Tensor<2, Int>,
    pub weights: Option<Tensor<2>>,
}

/// The micro-batch's loss, as `scale` makes it (the rank's share, the
/// accumulation), with its gradients added to `acc`; gradients only when the
/// loss is finite (a diverged step is never differentiated).
pub fn loss_and_gradients(
    model: &Llama,
    batch: MicroBatch,
    ropes: (&Rope, &Rope),
    checkpointed: bool,
    scale: impl Fn(Tensor<1>) -> Tensor<1>,
    acc: &mut GradientsAccumulator<Llama>,
) -> f32 {
    let (rope, rope_plain) = ropes;
    let MicroBatch {
        inputs,
        targets,
        weights,
    } = batch;
    if !checkpointed {
        let loss = scale(cross_entropy(model.forward(inputs, rope, None), targets, weights));
        let value: f32 = loss.clone().into_scalar();
        if value.is_finite() {
            acc.accumulate(model, GradientsParams::from_grads(loss.backward(), model));
        }
        return value;
    }

    // Forward off the graph, keeping each block's input.
    let plain = model.valid();
    let mut saved = Vec::with_capacity(plain.layers.len());
    let mut x = plain.embed(inputs.clone().inner());
    for layer in &plain.layers {
        saved.push(x.clone());
        x = layer.forward(x, rope_plain, None, None);
    }
    drop(plain);

    // The head: loss, and its gradient at the last block's output.
    let top = Tensor::from_inner(x).require_grad();
    let loss = scale(cross_entropy(model.head(top.clone()), targets, weights));
    let value: f32 = loss.clone().into_scalar();
    if !value.is_finite() {
        return value;
    }
    let grads = loss.backward();
    let mut upstream = top.grad(&grads).expect("the head's input requires a gradient");
    acc.accumulate(model, GradientsParams::from_grads(grads, model));

    // Each block recomputed from its input, top down.
    for (layer, input) in model.layers.iter().zip(saved).rev() {
        let input = Tensor::from_inner(input).require_grad();
        let output = layer.forward(input.clone(), rope, None, None);
        let grads = (output * Tensor::from_inner(upstream)).sum().backward();
        upstream = input.grad(&grads).expect("a block's input requires a gradient");
        acc.accumulate(model, GradientsParams::from_grads(grads, layer));
    }

    // The embeddings, when they (or their added rows) train.
    let added_train = model.embed_added.as_ref().is_some_and(|p| p.is_require_grad());
    if model.embed_tokens.is_require_grad() || added_train {
        let embedded = model.embed(inputs);
        let grads = (embedded * Tensor::from_inner(upstream)).sum().backward();
        acc.accumulate(model, GradientsParams::from_grads(grads, model));
    }
    value
}
