//! Streaming CSV parsing for uploads: detects the delimiter, strips a BOM, validates the header and
//! every row, and yields rows in batches so memory stays flat whatever the file size or shape.
//!
//! Every size a file controls is bounded ([`CsvLimits`]): columns, bytes per field, bytes per
//! row (enforced as bytes arrive, so a row never has to be held whole to be refused), and
//! batches end early at a chunk boundary once they hold [`BATCH_BYTES`]. Line numbers are
//! counted in constant memory.
//!
//! ```text
//!   bytes (any Read) ──► CsvParser::new (BOM, delimiter, header) ──► next_batch() … ──► NewItem
//! ```

mod sniff;

use crate::store::{CHUNK_ITEMS, NewItem};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::io::Read;
use thiserror::Error;

pub use sniff::detect_delimiter;

/// Why an upload's CSV was refused. Each message names the line where there is one.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CsvError {
    #[error("the file is empty")]
    Empty,
    #[error("the file has a header but no rows")]
    NoRows,
    #[error("line 1: column {column} has an empty header name")]
    EmptyHeaderName { column: usize },
    #[error("line 1: header name '{name}' appears more than once")]
    DuplicateHeader { name: String },
    #[error("line {line}: expected {expected} fields as in the header, found {found}")]
    RaggedRow {
        line: u64,
        expected: usize,
        found: usize,
    },
    #[error("line {line}: the text is not valid UTF-8")]
    InvalidUtf8 { line: u64 },
    #[error("line {line}: {message}")]
    Malformed { line: u64, message: String },
    #[error("line 1: the header has {found} columns; the limit is {limit}")]
    TooManyColumns { found: usize, limit: usize },
    #[error("line {line}: field '{column}' is {size} bytes; the limit is {limit}")]
    FieldTooLarge {
        line: u64,
        column: String,
        size: usize,
        limit: usize,
    },
    #[error("line {line}: the row is longer than {limit} bytes")]
    RowTooLarge { line: u64, limit: usize },
    #[error("line {line}: a quoted field opens here and is never closed")]
    UnterminatedQuote { line: u64 },
    #[error("could not read the upload: {0}")]
    Read(String),
}

impl CsvError {
    /// The code a client is answered with.
    pub fn code(&self) -> crate::codes::Code {
        use crate::codes::code;
        match self {
            CsvError::Empty => code::CSV_EMPTY,
            CsvError::NoRows => code::CSV_NO_ROWS,
            CsvError::EmptyHeaderName { .. } | CsvError::DuplicateHeader { .. } => {
                code::CSV_BAD_HEADER
            }
            CsvError::RaggedRow { .. } => code::CSV_RAGGED_ROW,
            CsvError::InvalidUtf8 { .. } => code::CSV_INVALID_UTF8,
            CsvError::Malformed { .. } => code::CSV_MALFORMED,
            CsvError::TooManyColumns { .. } => code::CSV_TOO_MANY_COLUMNS,
            CsvError::FieldTooLarge { .. } => code::CSV_FIELD_TOO_LARGE,
            CsvError::RowTooLarge { .. } => code::CSV_ROW_TOO_LARGE,
            CsvError::UnterminatedQuote { .. } => code::CSV_UNTERMINATED_QUOTE,
            CsvError::Read(_) => code::UPLOAD_INTERRUPTED,
        }
    }
}

/// What one upload's CSV may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsvLimits {
    pub max_columns: usize,
    /// Bytes of one field (header names included).
    pub max_field_bytes: usize,
    /// Bytes of one row as written in the file, quotes and delimiters included.
    pub max_row_bytes: usize,
}

impl Default for CsvLimits {
    fn default() -> Self {
        CsvLimits {
            max_columns: 512,
            max_field_bytes: 32 << 10,
            max_row_bytes: 64 << 10,
        }
    }
}

/// A batch ends at the next chunk boundary once its rows take this much memory (estimated as
/// their text plus [`CELL_OVERHEAD`] per field), so wide rows make smaller batches.
pub const BATCH_BYTES: usize = 4 << 20;

/// Memory a parsed field costs beyond its text (its name's copy, the JSON value, map upkeep).
const CELL_OVERHEAD: usize = 96;

/// Reads CSV rows from any byte source in batches.
pub struct CsvParser<R: Read> {
    reader: csv::Reader<sniff::LineCounter<sniff::Peeked<R>>>,
    columns: Vec<String>,
    record: csv::ByteRecord,
    rows_seen: u64,
    limits: CsvLimits,
}

impl<R: Read> std::fmt::Debug for CsvParser<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsvParser")
            .field("columns", &self.columns)
            .field("rows_seen", &self.rows_seen)
            .finish()
    }
}

impl<R: Read> CsvParser<R> {
    /// Sniffs the delimiter from the header line and validates the header, with the default
    /// limits.
    pub fn new(source: R) -> Result<Self, CsvError> {
        CsvParser::with_limits(source, CsvLimits::default())
    }

    /// As [`CsvParser::new`], refusing files beyond `limits`.
    pub fn with_limits(source: R, limits: CsvLimits) -> Result<Self, CsvError> {
        let peeked = sniff::Peeked::new(source).map_err(|e| CsvError::Read(e.to_string()))?;
        if peeked.is_empty() {
            return Err(CsvError::Empty);
        }
        let delimiter = detect_delimiter(peeked.first_line());
        let counter = sniff::LineCounter::new(peeked, delimiter, limits.max_row_bytes as u64);
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(false)
            .flexible(true)
            .from_reader(counter);
        let mut header = csv::ByteRecord::new();
        if !reader
            .read_byte_record(&mut header)
            .map_err(|e| map_csv_error(e, &limits))?
        {
            return Err(CsvError::Empty);
        }
        if header.len() > limits.max_columns {
            return Err(CsvError::TooManyColumns {
                found: header.len(),
                limit: limits.max_columns,
            });
        }
        let end = reader.position().byte().saturating_sub(1);
        if end + 1 > limits.max_row_bytes as u64 {
            return Err(CsvError::RowTooLarge {
                line: 1,
                limit: limits.max_row_bytes,
            });
        }
        reader.get_mut().record_ended(end, 2);
        let mut columns = Vec::with_capacity(header.len());
        let mut seen = HashSet::with_capacity(header.len());
        for (index, raw) in header.iter().enumerate() {
            let name = std::str::from_utf8(raw)
                .map_err(|_| CsvError::InvalidUtf8 { line: 1 })?
                .trim()
                .to_string();
            if name.is_empty() {
                return Err(CsvError::EmptyHeaderName { column: index + 1 });
            }
            if name.len() > limits.max_field_bytes {
                return Err(CsvError::FieldTooLarge {
                    line: 1,
                    column: format!("column {}", index + 1),
                    size: name.len(),
                    limit: limits.max_field_bytes,
                });
            }
            if !seen.insert(name.clone()) {
                return Err(CsvError::DuplicateHeader { name });
            }
            columns.push(name);
        }
        Ok(CsvParser {
            reader,
            columns,
            record: csv::ByteRecord::new(),
            rows_seen: 0,
            limits,
        })
    }

    /// Header names in file order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Up to `max` further rows, fewer when they are wide (see [`BATCH_BYTES`]); `Ok(None)` at
    /// the end of a file that had at least one row.
    pub fn next_batch(&mut self, max: usize) -> Result<Option<Vec<NewItem>>, CsvError> {
        let mut batch = Vec::with_capacity(max.min(CHUNK_ITEMS as usize));
        let mut bytes = 0usize;
        let chunk = CHUNK_ITEMS as usize;
        while batch.len() < max {
            if bytes >= BATCH_BYTES && batch.len() % chunk == 0 {
                break;
            }
            if !self
                .reader
                .read_byte_record(&mut self.record)
                .map_err(|e| map_csv_error(e, &self.limits))?
            {
                break;
            }
            // The csv crate counts records, not lines, and places a record after any blank lines
            // before it. The record's last byte is exact, so count back from there.
            let end = self.reader.position().byte().saturating_sub(1);
            let inner_newlines = self
                .record
                .iter()
                .map(|field| field.iter().filter(|b| **b == b'\n').count() as u64)
                .sum::<u64>();
            let start = self.record.position().map_or(end, |p| p.byte());
            let counter = self.reader.get_mut();
            let last_line = counter.line_at(end);
            counter.record_ended(end, last_line + 1);
            let line = last_line - inner_newlines;
            if end + 1 - start.min(end + 1) > self.limits.max_row_bytes as u64 {
                return Err(CsvError::RowTooLarge {
                    line,
                    limit: self.limits.max_row_bytes,
                });
            }
            // A row of one empty field is a blank line (csv skips truly empty ones already).
            if self.record.len() == 1 && self.record[0].is_empty() && self.columns.len() > 1 {
                continue;
            }
            if self.record.len() != self.columns.len() {
                return Err(CsvError::RaggedRow {
                    line,
                    expected: self.columns.len(),
                    found: self.record.len(),
                });
            }
            let mut values = Map::new();
            for (name, raw) in self.columns.iter().zip(self.record.iter()) {
                if raw.len() > self.limits.max_field_bytes {
                    return Err(CsvError::FieldTooLarge {
                        line,
                        column: name.clone(),
                        size: raw.len(),
                        limit: self.limits.max_field_bytes,
                    });
                }
                let text = std::str::from_utf8(raw).map_err(|_| CsvError::InvalidUtf8 { line })?;
                values.insert(name.clone(), Value::String(text.to_string()));
            }
            bytes += self.record.as_slice().len() + self.columns.len() * CELL_OVERHEAD;
            batch.push(NewItem {
                line: line as i64,
                values,
            });
        }
        self.rows_seen += batch.len() as u64;
        if batch.is_empty() {
            if self.rows_seen == 0 {
                return Err(CsvError::NoRows);
            }
            return Ok(None);
        }
        Ok(Some(batch))
    }
}

fn map_csv_error(err: csv::Error, limits: &CsvLimits) -> CsvError {
    // Only reached for I/O and UTF-8 problems (records are read as bytes, flexibly); the csv
    // crate's record count is the best line figure available here.
    let line = err.position().map_or(0, |p| p.line());
    match err.into_kind() {
        csv::ErrorKind::Io(e) => match e.get_ref().and_then(|e| e.downcast_ref::<sniff::Tripped>())
        {
            Some(sniff::Tripped::RowTooLarge { line }) => CsvError::RowTooLarge {
                line: *line,
                limit: limits.max_row_bytes,
            },
            Some(sniff::Tripped::UnterminatedQuote { line }) => {
                CsvError::UnterminatedQuote { line: *line }
            }
            None => CsvError::Read(e.to_string()),
        },
        csv::ErrorKind::Utf8 { .. } => CsvError::InvalidUtf8 { line },
        other => CsvError::Malformed {
            line,
            message: format!("{other:?}"),
        },
    }
}

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
