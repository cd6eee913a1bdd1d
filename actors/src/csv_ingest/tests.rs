use super::*;

fn parse_all(input: &[u8]) -> Result<(Vec<String>, Vec<NewItem>), CsvError> {
    let mut parser = CsvParser::new(input)?;
    let mut rows = Vec::new();
    while let Some(batch) = parser.next_batch(2)? {
        rows.extend(batch);
    }
    Ok((parser.columns().to_vec(), rows))
}

#[test]
fn seed_format_keeps_every_column_with_line_numbers() {
    let (columns, rows) =
        parse_all(b"linea,valor,field_name\n1,a,hello\n2,b,hello\n3,c,hello\n").expect("valid csv");
    assert_eq!(columns, ["linea", "valor", "field_name"]);
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].line, 2);
    assert_eq!(rows[2].line, 4);
    assert_eq!(rows[1].values["valor"], "b");
    assert_eq!(rows[1].values["field_name"], "hello");
}

#[test]
fn semicolon_and_tab_are_detected() {
    let (_, rows) = parse_all(b"phone;amount\n555;10\n").expect("semicolons");
    assert_eq!(rows[0].values["amount"], "10");
    let (_, rows) = parse_all(b"phone\tamount\n555\t10\n").expect("tabs");
    assert_eq!(rows[0].values["phone"], "555");
}

#[test]
fn quoted_fields_follow_rfc4180_and_bom_is_stripped() {
    let input = b"\xEF\xBB\xBFname,note\r\n\"Doe, Jane\",\"said \"\"hi\"\"\nthen left\"\r\nx,y\r\n";
    let (columns, rows) = parse_all(input).expect("quoted csv");
    assert_eq!(columns[0], "name");
    assert_eq!(rows[0].values["name"], "Doe, Jane");
    assert_eq!(rows[0].values["note"], "said \"hi\"\nthen left");
    assert_eq!(rows[1].line, 4, "a quoted newline advances the line count");
}

#[test]
fn delimiter_detection_ignores_quoted_delimiters() {
    assert_eq!(detect_delimiter(b"\"a;b;c\",d"), b',');
    assert_eq!(detect_delimiter(b"a;b;c"), b';');
    assert_eq!(detect_delimiter(b"single"), b',');
}

#[test]
fn refusals_name_the_problem_and_line() {
    assert_eq!(parse_all(b"").unwrap_err(), CsvError::Empty);
    assert_eq!(parse_all(b"\xEF\xBB\xBF \n").unwrap_err(), CsvError::Empty);
    assert_eq!(parse_all(b"a,b\n").unwrap_err(), CsvError::NoRows);
    assert_eq!(
        parse_all(b"a,,c\n1,2,3\n").unwrap_err(),
        CsvError::EmptyHeaderName { column: 2 }
    );
    assert_eq!(
        parse_all(b"a,b,a\n1,2,3\n").unwrap_err(),
        CsvError::DuplicateHeader { name: "a".into() }
    );
    assert_eq!(
        parse_all(b"a,b\n1,2\n3\n").unwrap_err(),
        CsvError::RaggedRow {
            line: 3,
            expected: 2,
            found: 1
        }
    );
    assert_eq!(
        parse_all(b"a,b\n1,2\n3,4\n5,\xFF\n").unwrap_err(),
        CsvError::InvalidUtf8 { line: 4 }
    );
    assert_eq!(
        parse_all(b"\xFF,b\n1,2\n").unwrap_err(),
        CsvError::InvalidUtf8 { line: 1 }
    );
    // Lines are physical lines: blank lines and quoted newlines count, as in an editor.
    assert_eq!(
        parse_all(b"a,b\n\n1,2\n\"x\ny\",2\n3\n").unwrap_err(),
        CsvError::RaggedRow {
            line: 6,
            expected: 2,
            found: 1
        }
    );
    let message = CsvError::RaggedRow {
        line: 7,
        expected: 3,
        found: 2,
    }
    .to_string();
    assert_eq!(
        message,
        "line 7: expected 3 fields as in the header, found 2"
    );
}

#[test]
fn blank_lines_are_skipped_and_batches_are_bounded() {
    let (_, rows) = parse_all(b"a,b\n\n1,2\n\n3,4\n").expect("blank lines");
    assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), [3, 5]);
    let mut parser = CsvParser::new(&b"a\n1\n2\n3\n"[..]).expect("header");
    assert_eq!(
        parser.next_batch(2).expect("batch").map(|b| b.len()),
        Some(2)
    );
    assert_eq!(
        parser.next_batch(2).expect("batch").map(|b| b.len()),
        Some(1)
    );
    assert_eq!(parser.next_batch(2).expect("end"), None);
}

fn parse_with(input: &[u8], limits: CsvLimits) -> Result<Vec<NewItem>, CsvError> {
    let mut parser = CsvParser::with_limits(input, limits)?;
    let mut rows = Vec::new();
    while let Some(batch) = parser.next_batch(1_024)? {
        rows.extend(batch);
    }
    Ok(rows)
}

fn small(max_columns: usize, max_field_bytes: usize, max_row_bytes: usize) -> CsvLimits {
    CsvLimits {
        max_columns,
        max_field_bytes,
        max_row_bytes,
    }
}

#[test]
fn hostile_shapes_are_refused_with_their_line() {
    let wide = format!("{}\n{}\n", ["c"; 3].join(","), ["1"; 3].join(","));
    assert_eq!(
        parse_with(wide.as_bytes(), small(2, 100, 1_000)).unwrap_err(),
        CsvError::TooManyColumns { found: 3, limit: 2 }
    );
    assert_eq!(
        parse_with(b"a,b\n1,2\n3,123456\n", small(10, 5, 1_000)).unwrap_err(),
        CsvError::FieldTooLarge {
            line: 3,
            column: "b".into(),
            size: 6,
            limit: 5
        }
    );
    // A row longer than the limit is refused even when each field is within its own limit, and
    // long before the row is read whole (here: a 1 MB row against a 100-byte limit).
    let mut long = b"a,b\n1,2\n".to_vec();
    long.extend(std::iter::repeat_n(b'x', 1_000_000));
    long.extend(b",y\n");
    assert_eq!(
        parse_with(&long, small(10, 2_000_000, 100)).unwrap_err(),
        CsvError::RowTooLarge {
            line: 3,
            limit: 100
        }
    );
    assert_eq!(
        parse_with(b"a,b\n1,2\n3,4567890123\n", small(10, 100, 10)).unwrap_err(),
        CsvError::RowTooLarge { line: 3, limit: 10 }
    );
    assert_eq!(
        parse_with(b"a,b\n1,2\n3,\"never\nclosed\n", CsvLimits::default()).unwrap_err(),
        CsvError::UnterminatedQuote { line: 3 }
    );
    // A quote inside an unquoted field is data, as csv reads it; "" escapes a quote.
    let rows = parse_with(
        b"a,b\n5\" screen,\"say \"\"hi\"\"\"\n",
        CsvLimits::default(),
    )
    .expect("quotes as data");
    assert_eq!(rows[0].values["a"], "5\" screen");
    assert_eq!(rows[0].values["b"], "say \"hi\"");
}

#[test]
fn duplicate_headers_are_found_among_many_columns() {
    let mut names: Vec<String> = (0..80_000).map(|i| format!("c{i}")).collect();
    let limits = small(100_000, 100, 10_000_000);
    let header = format!("{}\n{}\n", names.join(","), vec!["1"; 80_000].join(","));
    assert_eq!(
        parse_with(header.as_bytes(), limits).map(|r| r.len()),
        Ok(1)
    );
    names.push("c79999".into());
    let header = format!("{}\n", names.join(","));
    assert_eq!(
        parse_with(header.as_bytes(), limits).unwrap_err(),
        CsvError::DuplicateHeader {
            name: "c79999".into()
        }
    );
}

#[test]
fn lines_stay_exact_after_a_field_of_many_newlines() {
    let mut input = b"a,b\n1,\"".to_vec();
    input.extend(std::iter::repeat_n(b'\n', 200_000));
    input.extend(b"\"\n\n3,4\n5\n");
    let err = parse_with(&input, small(10, 1_000_000, 1_000_000)).unwrap_err();
    assert_eq!(
        err,
        CsvError::RaggedRow {
            line: 200_005,
            expected: 2,
            found: 1
        }
    );
}

#[test]
fn wide_rows_make_smaller_batches_on_chunk_boundaries() {
    let columns = 400;
    let mut input = (0..columns)
        .map(|i| format!("c{i}"))
        .collect::<Vec<_>>()
        .join(",");
    input.push('\n');
    let row = vec!["v"; columns].join(",");
    for _ in 0..1_024 {
        input.push_str(&row);
        input.push('\n');
    }
    let mut parser = CsvParser::new(input.as_bytes()).expect("header");
    let first = parser.next_batch(1_024).expect("batch").expect("rows");
    assert_eq!(
        first.len(),
        256,
        "one chunk's rows hold more than the batch budget"
    );
    let mut total = first.len();
    while let Some(batch) = parser.next_batch(1_024).expect("batch") {
        assert_eq!(batch.len() % 256, 0);
        total += batch.len();
    }
    assert_eq!(total, 1_024);
}
