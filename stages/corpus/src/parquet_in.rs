//! Reading Parquet that any Arrow writer wrote. Every Parquet reader of the
//! project opens files here and reads text columns through [`to_utf8`].
//!
//! The same text column arrives in several Arrow layouts depending on the
//! writer: `Utf8` (arrow-rs, older pyarrow), `LargeUtf8` (polars, pandas
//! via pyarrow for large frames), `Utf8View` (polars ≥ 1, recent pyarrow),
//! dictionary-encoded strings, and plain `Binary` from writers that do not
//! annotate UTF-8. Two things make them all read alike:
//! - files are opened without the embedded Arrow schema (the
//!   `ARROW:schema` metadata), so the Parquet types decide: a UTF-8 byte
//!   array becomes `Utf8`, a list becomes `List`, whatever the writer kept
//!   in memory;
//! - [`to_utf8`] still turns every other string or binary layout into a
//!   `StringArray` (checking UTF-8), for files whose Parquet types
//!   themselves say large, view, dictionary or binary.

use std::fs::File;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, StringArray};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

/// Opens a Parquet file for reading in batches of `batch_rows` rows. The
/// error is the Parquet library's own, for the caller to put in context.
pub fn open(path: &Path, batch_rows: usize) -> Result<ParquetRecordBatchReader, String> {
    open_bounded(path, batch_rows, usize::MAX)
}

/// [`open`] in batches of at most `batch_rows` rows and about `batch_bytes`
/// of data (at least one row), from the rows' mean size in the footer
/// (uncompressed): a table of whole chapters or books is read a few rows at
/// a time, one of sentences `batch_rows` at a time.
pub fn open_bounded(path: &Path, batch_rows: usize, batch_bytes: usize) -> Result<ParquetRecordBatchReader, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let options = ArrowReaderOptions::new().with_skip_arrow_metadata(true);
    ParquetRecordBatchReaderBuilder::try_new_with_options(file, options)
        .and_then(|b| {
            let groups = b.metadata().row_groups();
            let rows: i64 = groups.iter().map(|g| g.num_rows()).sum();
            let bytes: i64 = groups.iter().map(|g| g.total_byte_size()).sum();
            let row_bytes = usize::try_from(bytes / rows.max(1)).unwrap_or(0).max(1);
            let rows = (batch_bytes / row_bytes).clamp(1, batch_rows.max(1));
            b.with_batch_size(rows).build()
        })
        .map_err(|e| e.to_string())
}

/// The rows of a Parquet table, from its footer (nothing else is read);
/// `None` when it does not open as one.
pub fn table_rows(path: &Path) -> Option<u64> {
    let file = File::open(path).ok()?;
    let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(file, ArrowReaderOptions::new()).ok()?;
    u64::try_from(reader.metadata().file_metadata().num_rows()).ok()
}

/// True for the layouts [`to_utf8`] reads.
pub fn is_text(data_type: &DataType) -> bool {
    match data_type {
        DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View
        | DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView => true,
        DataType::Dictionary(_, values) => is_text(values),
        _ => false,
    }
}

/// A text column as a `StringArray`, whatever its layout; `Ok(None)` when
/// it is not text at all, `Err` (naming the row) when binary data is not
/// UTF-8. A `Utf8` column is returned without copying.
pub fn to_utf8(array: &ArrayRef) -> Result<Option<StringArray>, String> {
    Ok(Some(match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().clone(),
        DataType::LargeUtf8 => array.as_string::<i64>().iter().collect(),
        DataType::Utf8View => array.as_string_view().iter().collect(),
        DataType::Binary => from_bytes(array.as_binary::<i32>().iter())?,
        DataType::LargeBinary => from_bytes(array.as_binary::<i64>().iter())?,
        DataType::BinaryView => from_bytes(array.as_binary_view().iter())?,
        DataType::Dictionary(_, _) => {
            let Some(dict) = array.as_any_dictionary_opt() else {
                return Ok(None);
            };
            let Some(values) = to_utf8(dict.values())? else {
                return Ok(None);
            };
            let keys = dict.normalized_keys();
            (0..array.len())
                .map(|r| (!array.is_null(r)).then(|| values.value(keys[r])))
                .collect()
        }
        _ => return Ok(None),
    }))
}

fn from_bytes<'a>(cells: impl Iterator<Item = Option<&'a [u8]>>) -> Result<StringArray, String> {
    cells
        .enumerate()
        .map(|(row, cell)| match cell {
            None => Ok(None),
            Some(bytes) => std::str::from_utf8(bytes)
                .map(Some)
                .map_err(|e| format!("row {} of this batch is not UTF-8 text: {e}", row + 1)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::types::Int32Type;
    use arrow_array::{BinaryArray, DictionaryArray, Int64Array, LargeStringArray, StringViewArray};

    use super::*;

    fn texts(array: ArrayRef) -> Vec<Option<String>> {
        let s = to_utf8(&array).unwrap().expect("a text layout");
        s.iter().map(|v| v.map(str::to_string)).collect()
    }

    #[test]
    fn every_string_layout_reads_as_the_same_text() {
        let want = vec![Some("a".to_string()), None, Some("ß".to_string())];
        let layouts: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![Some("a"), None, Some("ß")])),
            Arc::new(LargeStringArray::from(vec![Some("a"), None, Some("ß")])),
            Arc::new(StringViewArray::from(vec![Some("a"), None, Some("ß")])),
            Arc::new(BinaryArray::from(vec![Some(&b"a"[..]), None, Some("ß".as_bytes())])),
            Arc::new(
                vec![Some("a"), None, Some("ß")]
                    .into_iter()
                    .collect::<DictionaryArray<Int32Type>>(),
            ),
        ];
        for layout in layouts {
            let dt = layout.data_type().clone();
            assert!(is_text(&dt), "{dt}");
            assert_eq!(texts(layout), want, "{dt}");
        }
    }

    #[test]
    fn binary_that_is_not_utf8_is_an_error_naming_the_row() {
        let bad: ArrayRef = Arc::new(BinaryArray::from(vec![&b"ok"[..], &[0xff, 0xfe][..]]));
        let err = to_utf8(&bad).unwrap_err();
        assert!(err.starts_with("row 2 of this batch is not UTF-8"), "{err}");
    }

    #[test]
    fn numbers_are_not_text() {
        let n: ArrayRef = Arc::new(Int64Array::from(vec![1, 2]));
        assert!(to_utf8(&n).unwrap().is_none());
        assert!(!is_text(n.data_type()));
    }
}
