//! The `split` kind: a deterministic train/validation/test split of any
//! table with an `id` column (corpus, instructions, questions). A row's side
//! is decided by a hash of its id and the salt alone, so the same document
//! lands on the same side in every run and every recipe: held-out sets never
//! leak into training, even when the corpus grows.

use std::fs::File;
use std::path::Path;

use arrow_array::{Array, BooleanArray, RecordBatch, RecordBatchReader};
use babelflow_stage::{InputSpec, ParamSpec, ParamType, Params, StageContext, StageError, StageKind};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde_json::json;

pub struct Split;

const PARAMS: &[ParamSpec] = &[
    ParamSpec::with_default("validation", ParamType::Float, "0.05", "share of rows for validation"),
    ParamSpec::with_default("test", ParamType::Float, "0.05", "share of rows for test"),
    ParamSpec::with_default(
        "salt",
        ParamType::Str,
        r#""babelflow""#,
        "mixed into the hash; change it for a different split",
    ),
];

const INPUTS: &[InputSpec] = &[InputSpec {
    name: "table",
    required: true,
    many: false,
    doc: "a Parquet table with a string `id` column",
}];

const SIDES: [&str; 3] = ["train", "validation", "test"];

/// A number in [0, 1) from the id: the row's place on the split line.
pub fn position(salt: &str, id: &str) -> f64 {
    let mut h = blake3::Hasher::new();
    h.update(salt.as_bytes());
    h.update(&[0]);
    h.update(id.as_bytes());
    let x = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap_or([0; 8]));
    (x >> 11) as f64 / (1u64 << 53) as f64
}

fn side(pos: f64, validation: f64, test: f64) -> usize {
    if pos < test {
        2
    } else if pos < test + validation {
        1
    } else {
        0
    }
}

impl StageKind for Split {
    fn name(&self) -> &'static str {
        "split"
    }
    fn code_version(&self) -> &'static str {
        "1"
    }
    fn summary(&self) -> &'static str {
        "deterministic train/validation/test split by hash of id"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn inputs(&self) -> &'static [InputSpec] {
        INPUTS
    }
    fn outputs(&self, _params: &Params) -> Vec<String> {
        SIDES
            .iter()
            .map(|s| format!("{s}.parquet"))
            .chain(["stats.json".to_string()])
            .collect()
    }
    fn check(&self, params: &Params) -> Vec<(String, String)> {
        let v = params.f64("validation").unwrap_or(0.0);
        let t = params.f64("test").unwrap_or(0.0);
        if v < 0.0 || t < 0.0 || v + t >= 1.0 {
            vec![(
                "validation".into(),
                format!("validation ({v}) and test ({t}) must be ≥ 0 and leave room for training"),
            )]
        } else {
            Vec::new()
        }
    }

    fn estimate(&self, ctx: &babelflow_stage::EstimateContext) -> babelflow_stage::Estimate {
        crate::estimate::split(ctx)
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let (validation, test) = (ctx.params.f64("validation")?, ctx.params.f64("test")?);
        let salt = ctx.params.str("salt")?;
        let input: &Path = &ctx.single_input("table")?.path;
        let reader = crate::parquet_in::open(input, 1024)
            .map_err(|e| StageError::input(input, None, format!("not a Parquet file: {e}")))?;
        let schema = reader.schema();
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
            .build();
        let mut writers = Vec::new();
        for s in SIDES {
            let path = ctx.output(&format!("{s}.parquet"));
            let f = File::create(&path).map_err(|e| StageError::io(&path, e))?;
            writers.push(
                ArrowWriter::try_new(f, schema.clone(), Some(props.clone()))
                    .map_err(|e| StageError::failed(format!("writing {}: {e}", path.display())))?,
            );
        }
        let mut counts = [0u64; 3];
        for batch in reader {
            ctx.check_cancelled()?;
            let batch: RecordBatch = batch.map_err(|e| StageError::input(input, None, e.to_string()))?;
            let ids = batch
                .column_by_name("id")
                .map(crate::parquet_in::to_utf8)
                .transpose()
                .map_err(|e| StageError::input(input, None, format!("column `id`: {e}")))?
                .flatten()
                .ok_or_else(|| StageError::input(input, None, "the table has no text column `id` to split by"))?;
            let sides: Vec<usize> = (0..ids.len())
                .map(|r| side(position(salt, ids.value(r)), validation, test))
                .collect();
            for (k, writer) in writers.iter_mut().enumerate() {
                let mask = BooleanArray::from(sides.iter().map(|&s| s == k).collect::<Vec<_>>());
                let part = arrow_select::filter::filter_record_batch(&batch, &mask)
                    .map_err(|e| StageError::failed(format!("splitting: {e}")))?;
                counts[k] += part.num_rows() as u64;
                if part.num_rows() > 0 {
                    writer
                        .write(&part)
                        .map_err(|e| StageError::failed(format!("writing a split: {e}")))?;
                }
            }
        }
        for w in writers {
            w.close()
                .map_err(|e| StageError::failed(format!("closing a split: {e}")))?;
        }
        let stats = json!({"salt": salt, "train": counts[0], "validation": counts[1], "test": counts[2]});
        ctx.write_json("stats.json", &stats)?;
        Ok(())
    }
}
