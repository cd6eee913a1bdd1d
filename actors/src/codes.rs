//! The one table of error codes of the core, at the very bottom: every error type maps to one
//! of these, and every surface (REST, the prototype's API, WebSocket frames) answers with it.

/// A stable error code clients match on, with the HTTP status it is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    pub name: &'static str,
    pub status: u16,
}

/// The error codes of the core (dispatch, store, upload), shared by the REST API, the
/// prototype's API (which answers the status, with `{"detail"}`) and WebSocket `error` frames.
pub mod code {
    use super::Code;
    const fn c(name: &'static str, status: u16) -> Code {
        Code { name, status }
    }
    pub const NOT_FOUND: Code = c("not_found", 404);
    pub const NOT_YOUR_ITEM: Code = c("not_your_item", 403);
    pub const STALE_LEASE: Code = c("stale_lease", 409);
    pub const ILLEGAL_TRANSITION: Code = c("illegal_transition", 409);
    pub const ROBOT_DISABLED: Code = c("robot_disabled", 409);
    pub const CONFLICT: Code = c("conflict", 409);
    pub const STORE_UNAVAILABLE: Code = c("store_unavailable", 503);
    pub const UNAVAILABLE: Code = c("unavailable", 503);
    pub const OBSERVATION_TOO_LARGE: Code = c("observation_too_large", 413);
    pub const OUTPUT_TOO_LARGE: Code = c("output_too_large", 413);
    pub const OUTPUT_TOO_DEEP: Code = c("output_too_deep", 422);
    pub const PAYLOAD_TOO_LARGE: Code = c("payload_too_large", 413);
    pub const PROCESS_NOT_FOUND: Code = c("process_not_found", 404);
    pub const PROCESS_DISABLED: Code = c("process_disabled", 409);
    pub const MISSING_PROCESS: Code = c("missing_process", 400);
    pub const UPLOAD_INTERRUPTED: Code = c("upload_interrupted", 400);
    pub const UPLOAD_TIMEOUT: Code = c("upload_timeout", 408);
    pub const CSV_EMPTY: Code = c("csv_empty", 422);
    pub const CSV_NO_ROWS: Code = c("csv_no_rows", 422);
    pub const CSV_BAD_HEADER: Code = c("csv_bad_header", 422);
    pub const CSV_RAGGED_ROW: Code = c("csv_ragged_row", 422);
    pub const CSV_INVALID_UTF8: Code = c("csv_invalid_utf8", 422);
    pub const CSV_MALFORMED: Code = c("csv_malformed", 422);
    pub const CSV_TOO_MANY_COLUMNS: Code = c("csv_too_many_columns", 422);
    pub const CSV_FIELD_TOO_LARGE: Code = c("csv_field_too_large", 422);
    pub const CSV_ROW_TOO_LARGE: Code = c("csv_row_too_large", 422);
    pub const CSV_UNTERMINATED_QUOTE: Code = c("csv_unterminated_quote", 422);

    /// Every code above, for documentation and tests.
    pub const ALL: &[Code] = &[
        NOT_FOUND,
        NOT_YOUR_ITEM,
        STALE_LEASE,
        ILLEGAL_TRANSITION,
        ROBOT_DISABLED,
        CONFLICT,
        STORE_UNAVAILABLE,
        UNAVAILABLE,
        OBSERVATION_TOO_LARGE,
        OUTPUT_TOO_LARGE,
        OUTPUT_TOO_DEEP,
        PAYLOAD_TOO_LARGE,
        PROCESS_NOT_FOUND,
        PROCESS_DISABLED,
        MISSING_PROCESS,
        UPLOAD_INTERRUPTED,
        UPLOAD_TIMEOUT,
        CSV_EMPTY,
        CSV_NO_ROWS,
        CSV_BAD_HEADER,
        CSV_RAGGED_ROW,
        CSV_INVALID_UTF8,
        CSV_MALFORMED,
        CSV_TOO_MANY_COLUMNS,
        CSV_FIELD_TOO_LARGE,
        CSV_ROW_TOO_LARGE,
        CSV_UNTERMINATED_QUOTE,
    ];
}
