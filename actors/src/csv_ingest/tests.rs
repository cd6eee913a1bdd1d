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
