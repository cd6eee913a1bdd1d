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

/// Counts physical lines (as an editor shows them) under the csv reader, which counts records.
/// It remembers the byte offsets of newlines read ahead of the parser until a record passes them.
pub(super) struct LineCounter<R> {
    inner: R,
    offset: u64,
    pending_newlines: VecDeque<u64>,
    lines_passed: u64,
}

impl<R: Read> LineCounter<R> {
    pub(super) fn new(inner: R) -> Self {
        LineCounter {
            inner,
            offset: 0,
            pending_newlines: VecDeque::new(),
            lines_passed: 0,
        }
    }

    /// The 1-based line on which the byte at `offset` stands. Offsets must not decrease.
    pub(super) fn line_at(&mut self, offset: u64) -> u64 {
        while self.pending_newlines.front().is_some_and(|nl| *nl < offset) {
            self.pending_newlines.pop_front();
            self.lines_passed += 1;
        }
        self.lines_passed + 1
    }
}

impl<R: Read> Read for LineCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        for (i, byte) in buf[..n].iter().enumerate() {
            if *byte == b'\n' {
                self.pending_newlines.push_back(self.offset + i as u64);
            }
        }
        self.offset += n as u64;
        Ok(n)
    }
}
