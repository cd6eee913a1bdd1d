//! Looks at the first line of an upload before parsing: BOM removal and delimiter detection.

use std::collections::VecDeque;
use std::io::{self, Read};

/// Longest header line examined for delimiter detection.
const MAX_SNIFF: usize = 1 << 20;

/// Picks `,`, `;` or tab: whichever occurs most often outside quotes in the header line
/// (`,` on a tie or when none occurs).
pub fn detect_delimiter(first_line: &[u8]) -> u8 {
    let mut counts = [0usize; 3];
    let mut in_quotes = false;
    for byte in first_line {
        match byte {
            b'"' => in_quotes = !in_quotes,
            b',' if !in_quotes => counts[0] += 1,
            b';' if !in_quotes => counts[1] += 1,
            b'\t' if !in_quotes => counts[2] += 1,
            _ => {}
        }
    }
    let candidates = [b',', b';', b'\t'];
    let mut best = 0;
    for i in 1..3 {
        if counts[i] > counts[best] {
            best = i;
        }
    }
    candidates[best]
}

/// A reader that has already read (and kept) its first line, with any UTF-8 BOM removed.
pub(super) struct Peeked<R> {
    head: Vec<u8>,
    pos: usize,
    first_line_len: usize,
    rest: R,
}

impl<R: Read> Peeked<R> {
    pub(super) fn new(mut rest: R) -> io::Result<Self> {
        let mut head = Vec::new();
        let mut chunk = [0u8; 8192];
        let first_line_len = loop {
            if let Some(end) = head.iter().position(|b| *b == b'\n') {
                break end;
            }
            if head.len() >= MAX_SNIFF {
                break head.len();
            }
            let n = rest.read(&mut chunk)?;
            if n == 0 {
                break head.len();
            }
            head.extend_from_slice(&chunk[..n]);
        };
        let pos = if head.starts_with(b"\xEF\xBB\xBF") {
            3
        } else {
            0
        };
        Ok(Peeked {
            head,
            pos,
            first_line_len,
            rest,
        })
    }

    /// Whether the source held nothing but (at most) a BOM and white space.
    pub(super) fn is_empty(&self) -> bool {
        self.head[self.pos..].iter().all(u8::is_ascii_whitespace)
    }

    /// The header line as read, without BOM.
    pub(super) fn first_line(&self) -> &[u8] {
        &self.head[self.pos.min(self.first_line_len)..self.first_line_len]
    }
}

impl<R: Read> Read for Peeked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.head.len() {
            let n = buf.len().min(self.head.len() - self.pos);
            buf[..n].copy_from_slice(&self.head[self.pos..self.pos + n]);
            self.pos += n;
            if self.pos == self.head.len() {
                self.head = Vec::new();
                self.pos = 0;
                self.first_line_len = 0;
            }
            return Ok(n);
        }
        self.rest.read(buf)
    }
}

/// Why [`LineCounter`] stopped the parser: a limit the csv reader itself cannot enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tripped {
    /// A row (the bytes since the last record ended) grew past the limit; it starts on `line`.
    RowTooLarge { line: u64 },
    /// The input ended inside a quoted field that opened on `line`.
    UnterminatedQuote { line: u64 },
}

impl std::fmt::Display for Tripped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for Tripped {}

/// Where a byte stands in CSV quoting, as csv-core reads it: a quote opens a quoted field only
/// as the field's first byte, and `""` inside one is an escaped quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quoting {
    FieldStart,
    Unquoted,
    Quoted,
    /// A quote inside a quoted field: it closes the field unless another quote follows.
    QuoteInQuoted,
}

/// Reads kept to answer line questions: the csv reader reads ahead at most one buffer (8 KiB)
/// past the record it returns, so the last two reads always hold the byte asked about.
const KEPT_READS: usize = 2;

/// Counts physical lines (as an editor shows them) under the csv reader, which counts records,
/// in constant memory: it keeps the newline count before each of its last reads and those
/// reads' bytes. It also enforces what the csv reader cannot: a bound on a row's bytes (checked
/// as bytes arrive, before the reader has buffered a whole row) and a closing quote before the
/// end of the input.
pub(super) struct LineCounter<R> {
    inner: R,
    /// Bytes read so far, and the newlines among them.
    offset: u64,
    newlines: u64,
    /// The last reads: (first offset, newlines before it, bytes).
    kept: VecDeque<(u64, u64, Vec<u8>)>,
    delimiter: u8,
    quoting: Quoting,
    /// Line on which the open quoted field started.
    quote_line: u64,
    /// Offset just past the last record the parser returned, and the line after it.
    record_end: u64,
    next_line: u64,
    /// Most bytes a row may span (plus the reader's read-ahead).
    max_ahead: u64,
    row_limit_line: Option<u64>,
}

impl<R: Read> LineCounter<R> {
    pub(super) fn new(inner: R, delimiter: u8, max_row_bytes: u64) -> Self {
        LineCounter {
            inner,
            offset: 0,
            newlines: 0,
            kept: VecDeque::with_capacity(KEPT_READS + 1),
            delimiter,
            quoting: Quoting::FieldStart,
            quote_line: 1,
            record_end: 0,
            next_line: 1,
            // csv's reader buffers 8 KiB; one read may already be past the row's end.
            max_ahead: max_row_bytes.saturating_add(16 << 10),
            row_limit_line: None,
        }
    }

    /// The 1-based line on which the byte at `offset` stands. `offset` must lie in the last
    /// reads (the csv reader never asks about bytes further back).
    pub(super) fn line_at(&self, offset: u64) -> u64 {
        for (start, before, bytes) in self.kept.iter().rev() {
            if offset >= *start {
                let upto = usize::try_from(offset - start)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                let inside = bytes[..upto].iter().filter(|b| **b == b'\n').count() as u64;
                return before + inside + 1;
            }
        }
        self.kept
            .front()
            .map_or(self.newlines, |(_, before, _)| *before)
            + 1
    }

    /// The parser returned a record ending at byte `end` (its last byte).
    pub(super) fn record_ended(&mut self, end: u64, line_after: u64) {
        self.record_end = end + 1;
        self.next_line = line_after;
    }

    /// Follows quoting and newlines through freshly read bytes.
    fn scan(&mut self, bytes: &[u8]) {
        let delimiter = self.delimiter;
        for byte in bytes {
            let terminator = *byte == b'\n' || *byte == b'\r';
            self.quoting = match (self.quoting, *byte) {
                (Quoting::Quoted, b'"') => Quoting::QuoteInQuoted,
                (Quoting::Quoted, _) => Quoting::Quoted,
                (Quoting::QuoteInQuoted, b'"') => Quoting::Quoted,
                (Quoting::FieldStart, b'"') => {
                    self.quote_line = self.newlines + 1;
                    Quoting::Quoted
                }
                (_, b) if b == delimiter || terminator => Quoting::FieldStart,
                _ => Quoting::Unquoted,
            };
            if *byte == b'\n' {
                self.newlines += 1;
            }
        }
    }
}

impl<R: Read> Read for LineCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.offset.saturating_sub(self.record_end) > self.max_ahead {
            let line = *self.row_limit_line.get_or_insert(self.next_line);
            return Err(io::Error::other(Tripped::RowTooLarge { line }));
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            if self.quoting == Quoting::Quoted {
                return Err(io::Error::other(Tripped::UnterminatedQuote {
                    line: self.quote_line,
                }));
            }
            return Ok(0);
        }
        let mut bytes = if self.kept.len() >= KEPT_READS {
            self.kept.pop_front().map(|(_, _, v)| v).unwrap_or_default()
        } else {
            Vec::new()
        };
        bytes.clear();
        bytes.extend_from_slice(&buf[..n]);
        self.kept.push_back((self.offset, self.newlines, bytes));
        self.scan(&buf[..n]);
        self.offset += n as u64;
        Ok(n)
    }
}
