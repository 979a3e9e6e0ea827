//! What every training kind leaves in the store: the trained model as an HF
//! folder (LoRA merged), metrics.parquet, and stats.json with the numbers the
//! report shows.

use std::collections::BTreeMap;
use std::path::Path;

use babelflow_model::hf;
use babelflow_model::resize::RESIZED_VOCAB;
use babelflow_stage::{StageContext, StageError};
use burn::module::Module;

use crate::start::Start;
use crate::trainable::{Held, Trainable};
use crate::trainer::Outcome;

/// Writes the outputs; `tokenizer` is the file shipped with the model
/// (default: the input model folder's, when it has one); `extra` is merged
/// into stats.json.
pub fn write(
    ctx: &StageContext,
    start: &Start,
    trainable: &Trainable,
    outcome: &Outcome,
    tokenizer: Option<&Path>,
    extra: serde_json::Value,
) -> Result<(), StageError> {
    if !ctx.world.is_root() {
        // Rank 0 writes the outputs of a data-parallel run.
        return Ok(());
    }
    outcome.metrics.write(&ctx.output("metrics.parquet"))?;
    let out = ctx.output("model");
    let exported = trainable.export(&outcome.model);
    let dtype = match ctx.params.str("save_dtype")? {
        "input" => hf::DiskDtype::of_folder(&start.model_dir).unwrap_or(hf::DiskDtype::F32),
        name => hf::DiskDtype::parse(name).ok_or_else(|| StageError::Param {
            name: "save_dtype".into(),
            message: format!("`{name}` is not f32, bf16, f16 or input"),
        })?,
    };
    hf::save(&out, &start.config, &exported, dtype).map_err(|e| StageError::failed(e.to_string()))?;
    let tok = tokenizer.map_or_else(|| start.model_dir.join("tokenizer.json"), Path::to_path_buf);
    if tok.is_file() {
        std::fs::copy(&tok, out.join("tokenizer.json")).map_err(|e| StageError::io(&tok, e))?;
    }
    hf::carry_tokenizer_files(&start.model_dir, &out).map_err(|e| StageError::failed(e.to_string()))?;
    // Training keeps the rows where they were: a later `new-embeddings`
    // stage still finds where the added ones begin.
    let resized = start.model_dir.join(RESIZED_VOCAB);
    if resized.is_file() {
        std::fs::copy(&resized, out.join(RESIZED_VOCAB)).map_err(|e| StageError::io(&resized, e))?;
    }
    let backend = start.backend.as_str();
    let as_map = |v: &[(String, f64)]| v.iter().cloned().collect::<BTreeMap<_, _>>();
    let bits_at = |step: u64| -> BTreeMap<String, f64> {
        outcome
            .metrics
            .rows
            .iter()
            .filter(|(at, _, metric, _, _)| *at == step && metric == "val_bits_per_char")
            .map(|(_, _, _, lang, value)| (lang.clone(), *value))
            .collect()
    };
    let steps = ctx.params.usize("steps")?;
    let mut stats = serde_json::json!({
        "steps": steps,
        "tokens": outcome.tokens,
        "final_loss": outcome.last_loss,
        "tokens_per_s": outcome.tokens as f64 / outcome.seconds.max(1e-9),
        "seconds": outcome.seconds,
        "backend": backend,
        "trainable": ctx.params.str("trainable")?,
        "trainable_parameters": start.held.trainable_parameters,
        "parameters": outcome.model.num_params(),
        "resumed_from_step": outcome.resumed_from,
        "world_size": outcome.world_size,
        "allreduce_seconds": outcome.allreduce_seconds,
        "optimizer_seconds": outcome.optimizer_seconds,
        "validation_loss_start": as_map(&outcome.initial_validation),
        "validation_loss_end": as_map(&outcome.final_validation),
        "validation_bits_per_char_start": bits_at(0),
        "validation_bits_per_char_end": bits_at(steps as u64),
        "precision": ctx.params.str("precision")?,
        "memory": memory(ctx, start, trainable, outcome)?,
    });
    if let (Some(stats), serde_json::Value::Object(extra)) = (stats.as_object_mut(), extra) {
        stats.extend(extra);
    }
    ctx.write_json("stats.json", &stats)?;
    ctx.note("backend", backend);
    ctx.note("final_loss", outcome.last_loss);
    if let Some(step) = outcome.resumed_from {
        ctx.note("resumed_from_step", step);
    }
    Ok(())
}

/// The peak split into what the stage knows it holds (weights by dtype;
/// for the trainable part its f32 gradients and AdamW's two f32 moments;
/// an estimate of the activations of one micro-batch, `memory.rs`) beside
/// the measured peak resident memory, which adds temporaries and the
/// allocator's own, and on a GPU the device's peak (`DevicePeak`), which
/// is where those parts live there.
fn memory(
    ctx: &StageContext,
    start: &Start,
    trainable: &Trainable,
    outcome: &Outcome,
) -> Result<serde_json::Value, StageError> {
    let world_size = outcome.world_size;
    let held: &Held = &start.held;
    let trainable_bytes = held.trainable_bytes;
    let frozen: u64 = held.frozen_bytes.values().sum();
    let (gradients, optimizer) = (trainable_bytes, 2 * trainable_bytes);
    let rows = ctx.params.usize("batch_size")?.div_ceil(world_size.max(1));
    let checkpointed = ctx.params.bool("checkpoint_activations")?;
    let kernels = crate::memory::Kernels::on(&start.backend);
    let activations =
        crate::memory::activations_bytes(&start.config, trainable, rows, start.seq_len, checkpointed, kernels);
    Ok(serde_json::json!({
        "peak_rss_bytes": babelflow_stage::memory::peak_rss_bytes(),
        "device_peak_bytes": outcome.device_peak.note(ctx),
        "weights_trainable_bytes": trainable_bytes,
        "weights_frozen_bytes": held.frozen_bytes,
        "gradients_bytes": gradients,
        "optimizer_state_bytes": optimizer,
        "activations_estimate_bytes": activations,
        "checkpoint_activations": checkpointed,
        "known_bytes": trainable_bytes + frozen + gradients + optimizer + activations,
    }))
}
