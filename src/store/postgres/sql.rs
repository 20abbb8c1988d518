//! The SQL the store runs, built once per store from checked, quoted
//! identifiers; values are always bind parameters.

use std::sync::Arc;

use sqlx::AssertSqlSafe;
use tokio::sync::OnceCell;

use super::{Inner, MAX_IDENTIFIER_LEN};

/// A schema or table name that [`PostgresStore`] refuses: only ASCII letters,
/// digits and `_`, not starting with a digit, 1 to 48 characters.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid PostgreSQL identifier {0:?}: use 1 to 48 ASCII letters, digits or underscores, not starting with a digit"
)]
pub struct InvalidIdentifier(String);

pub(super) fn checked_identifier(name: &str) -> Result<String, InvalidIdentifier> {
    let mut bytes = name.bytes();
    let valid = name.len() <= MAX_IDENTIFIER_LEN
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(name.to_owned())
    } else {
        Err(InvalidIdentifier(name.to_owned()))
    }
}

/// Quotes a name [`checked_identifier`] accepted. Quoting keeps names that
/// happen to be keywords (`user`, `order`) usable and keeps their case.
fn quoted(name: &str) -> String {
    debug_assert!(checked_identifier(name).is_ok());
    format!("\"{name}\"")
}

impl Inner {
    pub(super) fn new(schema: Option<String>, table: String) -> Self {
        Self {
            sql: Statements::new(schema.as_deref(), &table),
            schema,
            table,
            ready: OnceCell::new(),
        }
    }

    pub(super) fn qualified_name(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{schema}.{}", self.table),
            None => self.table.clone(),
        }
    }
}

/// A statement built once per store from checked identifiers.
#[derive(Clone)]
pub(super) struct Sql(Arc<str>);

impl Sql {
    pub(super) fn sql(&self) -> AssertSqlSafe<Arc<str>> {
        // Only identifiers that passed `checked_identifier` are interpolated;
        // every value is a bind parameter.
        AssertSqlSafe(self.0.clone())
    }
}

/// Every statement the store runs, with the table name filled in.
pub(super) struct Statements {
    pub(super) migrate: Vec<Arc<str>>,
    pub(super) load: Sql,
    pub(super) create: Sql,
    pub(super) save: Sql,
    pub(super) touch: Sql,
    pub(super) clear_expired_key: Sql,
    pub(super) rotate: Sql,
    pub(super) delete: Sql,
    pub(super) user_sessions: Sql,
    pub(super) delete_user_sessions: Sql,
    pub(super) delete_expired: Sql,
    pub(super) refusal: Sql,
    pub(super) cap_lock: Sql,
    pub(super) cap_held: Sql,
    pub(super) cap_evict: Sql,
}

/// `user_id` after a change set, given its mode (`$mode`: 0 keep, 1 set, 2
/// clear) and the new user (`$user`); `current` is the column as it is now.
fn user_expr(current: &str, mode: &str, user: &str) -> String {
    format!("CASE {mode}::int WHEN 0 THEN {current} WHEN 1 THEN {user}::text ELSE NULL END")
}

/// A `jsonb` object built from parallel arrays of keys and JSON texts. Each value
/// is cast on its own, so malformed JSON fails the statement instead of being
/// spliced into a neighbouring value.
fn object_expr(keys: &str, values: &str) -> String {
    format!(
        "(SELECT coalesce(jsonb_object_agg(x.k, x.v::jsonb), '{{}}'::jsonb) \
         FROM unnest({keys}::text[], {values}::text[]) AS x(k, v))"
    )
}

/// The size of a `jsonb` session object: its keys and its values as
/// PostgreSQL prints them (strings and numbers as JSON has them; objects and
/// arrays with a space after each `,` and `:`).
fn size_expr(data: &str) -> String {
    format!(
        "(SELECT coalesce(sum(octet_length(e.key) + octet_length(e.value::text)), 0) \
         FROM jsonb_each({data}) AS e)"
    )
}

/// The rows a write may change: stored format 1 (`NULL`, the column's value in
/// every row written before it existed, or 1), and, when the write sets values
/// (`$set` non-empty), a result within the limit (`$limit`).
fn writable(data: &str, set: &str, limit: &str) -> String {
    format!(
        "coalesce(format, 1) = 1 AND (cardinality({set}::text[]) = 0 OR {size} <= {limit})",
        size = size_expr(data)
    )
}

impl Statements {
    pub(super) fn new(schema: Option<&str>, table: &str) -> Self {
        let t = match schema {
            Some(schema) => format!("{}.{}", quoted(schema), quoted(table)),
            None => quoted(table),
        };
        let user_index = quoted(&format!("{table}_user_idx"));
        let expiry_index = quoted(&format!("{table}_expiry_idx"));
        let sql = |text: String| Sql(text.into());

        let mut migrate: Vec<Arc<str>> = Vec::new();
        if let Some(schema) = schema {
            migrate.push(format!("CREATE SCHEMA IF NOT EXISTS {}", quoted(schema)).into());
        }
        migrate.push(
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (\
                 storage_key text PRIMARY KEY, \
                 data jsonb NOT NULL, \
                 user_id text, \
                 created_at_ms bigint NOT NULL, \
                 expires_at_ms bigint NOT NULL)"
            )
            .into(),
        );
        // The stored format: NULL is format 1, so rows written before the
        // column existed, and by releases that do not write it, are format 1
        // as they stand. Adding a nullable column rewrites nothing, but
        // `ALTER TABLE` takes the table's strongest lock even when the column
        // exists (stalling every session write while it waits): so it runs
        // only when the catalog says the column is missing, and before the
        // `CREATE INDEX`es, whose share lock it would otherwise have to
        // upgrade (a deadlock with a login transaction upgrading its own).
        migrate.push(
            format!(
                "DO $$ BEGIN \
                 IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '{t}'::regclass \
                 AND attname = 'format' AND NOT attisdropped) THEN \
                 ALTER TABLE {t} ADD COLUMN format smallint; \
                 END IF; END $$"
            )
            .into(),
        );
        migrate.push(
            format!(
                "CREATE INDEX IF NOT EXISTS {user_index} ON {t} (user_id) WHERE user_id IS NOT NULL"
            )
            .into(),
        );
        migrate.push(
            format!("CREATE INDEX IF NOT EXISTS {expiry_index} ON {t} (expires_at_ms)").into(),
        );

        Self {
            migrate,
            // Keys and values come back as two arrays aggregated in one pass, so
            // they stay in step.
            load: sql(format!(
                "SELECT s.user_id, s.created_at_ms, s.expires_at_ms, s.format, d.keys, d.vals \
                 FROM {t} AS s CROSS JOIN LATERAL \
                 (SELECT array_agg(e.key) AS keys, array_agg(e.value::text) AS vals \
                  FROM jsonb_each(s.data) AS e) AS d \
                 WHERE s.storage_key = $1 AND s.expires_at_ms > $2"
            )),
            // Takes the key when it is free or holds an expired row; a live row
            // makes the conditional update match nothing.
            create: sql(format!(
                "INSERT INTO {t} AS s (storage_key, data, user_id, created_at_ms, expires_at_ms) \
                 VALUES ($1, {data}, $4, $5, $6) \
                 ON CONFLICT (storage_key) DO UPDATE SET \
                 data = excluded.data, user_id = excluded.user_id, \
                 created_at_ms = excluded.created_at_ms, expires_at_ms = excluded.expires_at_ms \
                 WHERE s.expires_at_ms <= $7",
                data = object_expr("$2", "$3"),
            )),
            // One statement, applied to the row as it is when the row lock is
            // granted: concurrent saves merge instead of overwriting each other.
            // The limit is judged against the row as it is when its lock is
            // granted (READ COMMITTED re-evaluates the WHERE on the latest
            // version), so concurrent saves cannot pass it together.
            save: sql(format!(
                "UPDATE {t} SET \
                 data = (data - $2::text[]) || {data}, \
                 user_id = {user}, \
                 expires_at_ms = $7 \
                 WHERE storage_key = $1 AND expires_at_ms > $8 AND {writable}",
                data = object_expr("$3", "$4"),
                user = user_expr("user_id", "$5", "$6"),
                writable = writable(
                    &format!("(data - $2::text[]) || {}", object_expr("$3", "$4")),
                    "$3",
                    "$9"
                ),
            )),
            touch: sql(format!(
                "UPDATE {t} SET expires_at_ms = $2 \
                 WHERE storage_key = $1 AND expires_at_ms > $3 AND coalesce(format, 1) = 1"
            )),
            clear_expired_key: sql(format!(
                "DELETE FROM {t} WHERE storage_key = $1 AND expires_at_ms <= $2"
            )),
            // A plain insert: a live row at the new key is a unique violation,
            // which rolls the move back.
            rotate: sql(format!(
                "WITH old AS (\
                 DELETE FROM {t} WHERE storage_key = $1 AND expires_at_ms > $2 AND {writable} \
                 RETURNING data, user_id, created_at_ms) \
                 INSERT INTO {t} (storage_key, data, user_id, created_at_ms, expires_at_ms) \
                 SELECT $3, (old.data - $4::text[]) || {data}, {user}, old.created_at_ms, $9 \
                 FROM old",
                data = object_expr("$5", "$6"),
                user = user_expr("old.user_id", "$7", "$8"),
                writable = writable(
                    &format!("(data - $4::text[]) || {}", object_expr("$5", "$6")),
                    "$5",
                    "$10"
                ),
            )),
            delete: sql(format!(
                "DELETE FROM {t} WHERE storage_key = $1 RETURNING expires_at_ms > $2"
            )),
            user_sessions: sql(format!(
                "SELECT storage_key, created_at_ms, expires_at_ms FROM {t} \
                 WHERE user_id = $1 AND expires_at_ms > $2 \
                 ORDER BY created_at_ms, storage_key"
            )),
            delete_user_sessions: sql(format!(
                "WITH d AS (DELETE FROM {t} WHERE user_id = $1 RETURNING expires_at_ms) \
                 SELECT count(*) FILTER (WHERE expires_at_ms > $2) FROM d"
            )),
            // Why a write changed no row: the live row's format and the size
            // the changes would give it (none: the session is gone).
            refusal: sql(format!(
                "SELECT coalesce(format, 1)::int AS format, {size}::bigint AS size FROM {t} \
                 WHERE storage_key = $1 AND expires_at_ms > $2",
                size = size_expr(&format!(
                    "(data - $3::text[]) || {}",
                    object_expr("$4", "$5")
                )),
            )),
            // Admissions of one user's sessions queue on a lock of their own
            // (a hash of the user: a collision only makes two users queue).
            cap_lock: sql("SELECT pg_advisory_xact_lock($1, hashtext($2))".to_owned()),
            cap_held: sql(format!(
                "SELECT storage_key FROM {t} \
                 WHERE user_id = $1 AND expires_at_ms > $2 AND storage_key <> ALL($3::text[]) \
                 ORDER BY created_at_ms, storage_key"
            )),
            cap_evict: sql(format!(
                "DELETE FROM {t} WHERE storage_key = ANY($1::text[]) AND user_id = $2"
            )),
            // SKIP LOCKED lets concurrent cleaners share the work; FOR UPDATE
            // rechecks the expiry against a concurrent refresh.
            delete_expired: sql(format!(
                "DELETE FROM {t} WHERE storage_key IN (\
                 SELECT storage_key FROM {t} WHERE expires_at_ms <= $1 \
                 LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 AND expires_at_ms <= $1 \
                 RETURNING storage_key, user_id"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_outside_the_safe_set_are_refused() {
        for bad in [
            "",
            "1table",
            "my-table",
            "t\"; DROP TABLE x; --",
            "schéma",
            &"a".repeat(49),
        ] {
            assert!(checked_identifier(bad).is_err(), "{bad:?}");
        }
        for good in ["sessions", "_t", "Web_Sessions2", &"a".repeat(48)] {
            assert_eq!(checked_identifier(good).as_deref(), Ok(good));
        }
    }
}
