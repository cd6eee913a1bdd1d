//! Property tests: any bytes are refused or stored exactly, never a panic; a CSV written by a
//! standard writer reads back to the same fields and the lines an editor would show.

use super::*;
use proptest::prelude::*;

fn parse(bytes: &[u8], limits: CsvLimits) -> Result<(Vec<String>, Vec<NewItem>), CsvError> {
    let mut parser = CsvParser::with_limits(bytes, limits)?;
    let mut rows = Vec::new();
    while let Some(batch) = parser.next_batch(7)? {
        rows.extend(batch);
    }
    Ok((parser.columns().to_vec(), rows))
}

fn small_limits() -> CsvLimits {
    CsvLimits {
        max_columns: 6,
        max_field_bytes: 40,
        max_row_bytes: 120,
    }
}

/// A field: letters, digits, and the characters that need quoting.
fn field() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-z0-9 ,;\"\\n]{0,12}").expect("regex")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_are_refused_or_parsed_within_the_limits(
        bytes in proptest::collection::vec(any::<u8>(), 0..400)
    ) {
        let limits = small_limits();
        if let Ok((columns, rows)) = parse(&bytes, limits) {
            prop_assert!(!columns.is_empty() && columns.len() <= limits.max_columns);
            prop_assert!(!rows.is_empty());
            for row in &rows {
                prop_assert_eq!(row.values.len(), columns.len());
                for value in row.values.values() {
                    prop_assert!(value.as_str().is_some_and(|v| v.len() <= limits.max_field_bytes));
                }
                prop_assert!(row.line >= 2);
            }
        }
    }

    #[test]
    fn written_csv_reads_back_exactly_with_editor_lines(
        header in proptest::collection::vec("[a-z]{1,6}", 1..5),
        rows in proptest::collection::vec(proptest::collection::vec(field(), 5), 1..20),
    ) {
        let mut columns = header.clone();
        columns.sort();
        columns.dedup();
        let width = columns.len();
        let mut writer = csv::Writer::from_writer(Vec::new());
        writer.write_record(&columns).expect("header");
        let mut expected_lines = Vec::new();
        let mut line = 2i64;
        let mut written = Vec::new();
        for row in &rows {
            let row: Vec<String> = row[..width].to_vec();
            // A row of one empty field is a blank line to the parser: make it non-empty.
            let row = if row.iter().all(String::is_empty) {
                let mut row = row;
                row[0] = "x".into();
                row
            } else {
                row
            };
            writer.write_record(&row).expect("row");
            expected_lines.push(line);
            line += 1 + row.iter().map(|f| f.matches('\n').count() as i64).sum::<i64>();
            written.push(row);
        }
        let bytes = writer.into_inner().expect("flush");
        let (got_columns, got) = parse(&bytes, CsvLimits::default()).expect("valid csv");
        prop_assert_eq!(&got_columns, &columns);
        prop_assert_eq!(got.len(), written.len());
        for ((item, row), line) in got.iter().zip(&written).zip(&expected_lines) {
            prop_assert_eq!(item.line, *line);
            for (name, value) in columns.iter().zip(row) {
                prop_assert_eq!(item.values[name].as_str(), Some(value.as_str()));
            }
        }
    }
}
