//! Streaming CSV parsing for uploads: detects the delimiter, strips a BOM, validates the header and
//! every row, and yields rows in batches so memory stays flat whatever the file size.
//!
//! ```text
//!   bytes (any Read) ──► CsvParser::new (BOM, delimiter, header) ──► next_batch() … ──► NewItem
//! ```

mod sniff;

use crate::store::NewItem;
use serde_json::{Map, Value};
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
    #[error("could not read the upload: {0}")]
    Read(String),
}

/// Reads CSV rows from any byte source in batches.
pub struct CsvParser<R: Read> {
    reader: csv::Reader<sniff::LineCounter<sniff::Peeked<R>>>,
    columns: Vec<String>,
    record: csv::ByteRecord,
    rows_seen: u64,
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
    /// Sniffs the delimiter from the header line and validates the header.
    pub fn new(source: R) -> Result<Self, CsvError> {
        let peeked = sniff::Peeked::new(source).map_err(|e| CsvError::Read(e.to_string()))?;
        if peeked.is_empty() {
            return Err(CsvError::Empty);
        }
        let delimiter = detect_delimiter(peeked.first_line());
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(false)
            .flexible(true)
            .from_reader(sniff::LineCounter::new(peeked));
        let mut header = csv::ByteRecord::new();
        if !reader
            .read_byte_record(&mut header)
            .map_err(map_csv_error)?
        {
            return Err(CsvError::Empty);
        }
        let mut columns = Vec::with_capacity(header.len());
        for (index, raw) in header.iter().enumerate() {
            let name = std::str::from_utf8(raw)
                .map_err(|_| CsvError::InvalidUtf8 { line: 1 })?
                .trim()
                .to_string();
            if name.is_empty() {
                return Err(CsvError::EmptyHeaderName { column: index + 1 });
            }
            if columns.contains(&name) {
                return Err(CsvError::DuplicateHeader { name });
            }
            columns.push(name);
        }
        Ok(CsvParser {
            reader,
            columns,
            record: csv::ByteRecord::new(),
            rows_seen: 0,
        })
    }

    /// Header names in file order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Up to `max` further rows; `Ok(None)` at the end of a file that had at least one row.
    pub fn next_batch(&mut self, max: usize) -> Result<Option<Vec<NewItem>>, CsvError> {
        let mut batch = Vec::with_capacity(max);
        while batch.len() < max {
            if !self
                .reader
                .read_byte_record(&mut self.record)
                .map_err(map_csv_error)?
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
            let line = self.reader.get_mut().line_at(end) - inner_newlines;
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
            let mut values = Map::with_capacity(self.columns.len());
            for (name, raw) in self.columns.iter().zip(self.record.iter()) {
                let text = std::str::from_utf8(raw).map_err(|_| CsvError::InvalidUtf8 { line })?;
                values.insert(name.clone(), Value::String(text.to_string()));
            }
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

fn map_csv_error(err: csv::Error) -> CsvError {
    // Only reached for I/O and UTF-8 problems (records are read as bytes, flexibly); the csv
    // crate's record count is the best line figure available here.
    let line = err.position().map_or(0, |p| p.line());
    match err.into_kind() {
        csv::ErrorKind::Io(e) => CsvError::Read(e.to_string()),
        csv::ErrorKind::Utf8 { .. } => CsvError::InvalidUtf8 { line },
        other => CsvError::Malformed {
            line,
            message: format!("{other:?}"),
        },
    }
}

#[cfg(test)]
mod tests;
