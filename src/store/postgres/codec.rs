//! Between rows and records: error mapping, timestamps, JSON text, user changes.

use std::time::SystemTime;

use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::store::{ChangeSet, Data, Record, STORED_FORMAT, StoreError, UserChange};

/// Maps sqlx errors onto the two kinds the layer tells apart: "try again later"
/// (answered with 503) and everything else.
pub(super) fn store_error(error: sqlx::Error) -> StoreError {
    let unavailable = match &error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 57P01-03: server shutting down, crashed
            // or starting; 57014: statement timeout or cancel; 53300: too many
            // connections.
            code.starts_with("08")
                || matches!(&*code, "57P01" | "57P02" | "57P03" | "57014" | "53300")
        }),
        _ => false,
    };
    if unavailable {
        tracing::warn!(%error, "postgres session store unavailable");
        StoreError::unavailable(error)
    } else {
        tracing::error!(%error, "postgres session store error");
        StoreError::backend(error)
    }
}

/// Unix time in milliseconds, the precision the table keeps.
pub(super) fn millis(time: SystemTime) -> i64 {
    crate::time::unix_millis(time)
}

pub(super) fn from_millis(ms: i64) -> Result<SystemTime, StoreError> {
    crate::time::from_unix_millis(ms)
        .ok_or_else(|| StoreError::backend(format!("timestamp out of range: {ms} ms")))
}

/// Removes the whitespace `jsonb` puts after `,` and `:` when printing, so values
/// come back as the compact text serde_json writes. Whitespace inside strings
/// is kept; numbers are copied as printed, so no precision is lost.
pub(super) fn compact_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !matches!(c, ' ' | '\n' | '\r' | '\t') {
            if c == '"' {
                in_string = true;
            }
            out.push(c);
        }
    }
    out
}

pub(super) fn user_mode(change: &UserChange) -> (i32, Option<&str>) {
    match change {
        UserChange::Keep => (0, None),
        UserChange::Set(user) => (1, Some(user.as_str())),
        UserChange::Clear => (2, None),
    }
}

pub(super) fn split_inserted(changes: &ChangeSet) -> (Vec<&str>, Vec<&str>) {
    changes.inserted().unzip()
}

/// Refuses a row marked with a stored format other than 1 (`NULL` is 1).
pub(super) fn check_format(row: &PgRow) -> Result<(), StoreError> {
    let format: Option<i16> = row.try_get("format").map_err(StoreError::backend)?;
    match format {
        None | Some(1) => Ok(()),
        Some(found) => Err(StoreError::UnsupportedFormat {
            found: u32::try_from(found).unwrap_or(u32::MAX),
            supported: STORED_FORMAT,
        }),
    }
}

pub(super) fn record_from_row(row: &PgRow) -> Result<Record, sqlx::Error> {
    let keys: Option<Vec<String>> = row.try_get("keys")?;
    let values: Option<Vec<String>> = row.try_get("vals")?;
    let data: Data = keys
        .unwrap_or_default()
        .into_iter()
        .zip(values.unwrap_or_default())
        .map(|(key, value)| (key, compact_json(&value)))
        .collect();
    Ok(Record {
        data,
        user: row.try_get("user_id")?,
        created_at: from_millis(row.try_get("created_at_ms")?)
            .map_err(|e| sqlx::Error::Decode(e.into()))?,
        expires_at: from_millis(row.try_get("expires_at_ms")?)
            .map_err(|e| sqlx::Error::Decode(e.into()))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_json_drops_jsonb_spacing_but_not_spaces_in_strings() {
        assert_eq!(
            compact_json(r#"{"a b": [1, 2, {"c": null}], "d": "x, y: \"z\" \\"}"#),
            r#"{"a b":[1,2,{"c":null}],"d":"x, y: \"z\" \\"}"#
        );
        assert_eq!(
            compact_json("12345678901234567890123.5"),
            "12345678901234567890123.5"
        );
        assert_eq!(compact_json(r#""""#), r#""""#);
    }
}
