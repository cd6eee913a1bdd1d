#!/usr/bin/env python3
"""Sizes a person has to read: non-test Rust files over a line limit, and functions over a line
limit, outside tests. A file counts every line it has; test code is left out: files under a
`tests/` directory, files named `*tests.rs` or `properties.rs` (test modules of their own), the
test-support crate (`tests/`), vendored crates (`ops/vendor`), and, for functions, every item
under `#[cfg(test)]`.

    python3 ops/scripts/house.py            # report
    python3 ops/scripts/house.py --check    # exit 1 when a limit is passed
"""
import argparse
import os
import re
import sys

ROOTS = ["actors/src", "web/src", "node/src", "ops/src"]

FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")


def blank_out(text):
    """The text with comments, strings and char literals replaced by spaces (newlines kept), so
    braces can be counted."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif re.match(r'b?r#*"', text[i:i + 40]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'b?r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + m.end())
            j = n if j < 0 else j + len(end)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "'":
            m = re.match(r"'(\\(x[0-9a-fA-F]{2}|u\{[0-9a-fA-F]+\}|.)|[^\\'])'", text[i:])
            if m:
                out.append(" " * m.end())
                i += m.end()
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def matching_brace(code, open_at):
    depth = 0
    for j in range(open_at, len(code)):
        if code[j] == "{":
            depth += 1
        elif code[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return len(code) - 1


def test_spans(code):
    """Character spans of items under #[cfg(test)]."""
    spans = []
    for m in re.finditer(r"#\[cfg\(test\)\]", code):
        semi = code.find(";", m.end())
        brace = code.find("{", m.end())
        if brace < 0 or (0 <= semi < brace):
            spans.append((m.start(), semi))
        else:
            spans.append((m.start(), matching_brace(code, brace)))
    return spans


def measure(path):
    text = open(path, encoding="utf-8").read()
    code = blank_out(text)
    spans = test_spans(code)
    line_of = lambda pos: code.count("\n", 0, pos) + 1
    in_test = lambda pos: any(a <= pos <= b for a, b in spans)
    lines = text.count("\n") + (0 if text.endswith("\n") else 1)
    functions = []
    offset = 0
    for raw in code.splitlines(keepends=True):
        m = FN.match(raw)
        if m and not in_test(offset):
            start = offset + m.end()
            brace, semi = code.find("{", start), code.find(";", start)
            if brace >= 0 and not (0 <= semi < brace):
                end = matching_brace(code, brace)
                functions.append((m.group(6), line_of(offset), line_of(end) - line_of(offset) + 1))
        offset += len(raw)
    return lines, functions


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-file", type=int, default=700)
    parser.add_argument("--max-fn", type=int, default=100)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--root", default=os.path.join(os.path.dirname(__file__), "..", ".."))
    args = parser.parse_args()
    over = []
    for root in ROOTS:
        for folder, dirs, files in os.walk(os.path.join(args.root, root)):
            dirs[:] = [d for d in dirs if d not in ("tests", "vendor")]
            for name in sorted(files):
                if not name.endswith(".rs") or name.endswith("tests.rs") or name == "properties.rs":
                    continue
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, args.root)
                lines, functions = measure(path)
                if lines > args.max_file:
                    over.append(f"{rel}: {lines} lines (limit {args.max_file})")
                for fn, line, length in functions:
                    if length > args.max_fn:
                        over.append(f"{rel}:{line}: fn {fn} is {length} lines (limit {args.max_fn})")
    for line in over:
        print(line)
    print(f"{len(over)} over the limits (files {args.max_file} lines, functions {args.max_fn} lines)")
    return 1 if args.check and over else 0


if __name__ == "__main__":
    sys.exit(main())
