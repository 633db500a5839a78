//! What every table's statements share: placeholders for both dialects, statement sizes,
//! reading booleans, writing JSON, binding user text.

use serde_json::{Map, Value};
use sqlx::any::AnyRow;
use sqlx::Row;

pub(super) type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

pub(super) type Query<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Bind a user's text as a column can hold it. PostgreSQL's `text` cannot hold U+0000 (the
/// whole statement fails, and would fail again on every retry), so in the columns derived
/// from a body — for queries, never read back as the message — it becomes U+FFFD. The body
/// itself is JSON, where U+0000 is the escape `\u0000`: what is read back is exactly what was
/// sent. Both backends store the same, so a store can move between them.
pub(super) fn bind_text<'q>(q: Query<'q>, text: Option<&'q str>) -> Query<'q> {
    match text {
        Some(t) if t.contains('\0') => q.bind(Some(storable(t))),
        text => q.bind(text),
    }
}

fn storable(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// Which SQL dialect the store speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    pub fn label(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }

    /// SQLite gets plain `?`: sqlx binds `$N` there by looking each name up, which is
    /// quadratic in the number of parameters and dominated the profile of big batches.
    pub(super) fn positional(self) -> bool {
        self == Dialect::Sqlite
    }
}

/// Most rows per statement: 14 parameters a row stays far below SQLite's (32,766) and
/// PostgreSQL's (65,535) parameter limits.
const ROWS_PER_STATEMENT: usize = 256;

/// Split rows into statements of power-of-two sizes (256, 128, …, 1): at most nine distinct
/// statement shapes per table, so prepared statements are reused from sqlx's cache instead of
/// one new (large) statement per batch size — that cost CPU and tens of MB of cached plans.
pub(super) fn statement_chunks<T>(rows: &[T]) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut rest = rows;
    while !rest.is_empty() {
        let n = ROWS_PER_STATEMENT.min(1 << rest.len().ilog2());
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
    }
    out
}

/// `($1, …, $n), ($n+1, …)` (PostgreSQL) or `(?, …), (?, …)` (SQLite) for `rows` rows of
/// `cols` parameters; `literal_after: (k, lit)` puts `lit` after the k-th parameter of each row.
pub(super) fn placeholders(dialect: Dialect, rows: usize, cols: usize, literal_after: Option<(usize, &str)>) -> String {
    let mut out = String::with_capacity(rows * cols * 5);
    let mut n = 0;
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols {
            if c > 0 {
                out.push_str(", ");
            }
            n += 1;
            if dialect.positional() {
                out.push('?');
            } else {
                out.push_str(&format!("${n}"));
            }
            if let Some((after, lit)) = literal_after {
                if c + 1 == after {
                    out.push_str(", ");
                    out.push_str(lit);
                }
            }
        }
        out.push(')');
    }
    out
}

/// `(…)` list of `n` parameters numbered from `first` (`?` on SQLite).
pub(super) fn placeholders_from(dialect: Dialect, first: usize, n: usize) -> String {
    let list: Vec<String> = (0..n)
        .map(|i| {
            if dialect.positional() {
                "?".to_string()
            } else {
                format!("${}", first + i)
            }
        })
        .collect();
    format!("({})", list.join(", "))
}

/// Booleans are selected as `CAST(CASE WHEN col THEN 1 ELSE 0 END AS BIGINT)`: the `Any`
/// driver cannot decode SQLite's BOOLEAN columns, PostgreSQL cannot cast boolean to bigint
/// directly, and this reads the same on both backends.
pub(super) fn get_bool(r: &AnyRow, col: &str) -> Result<bool, sqlx::Error> {
    r.try_get::<i64, _>(col).map(|v| v != 0)
}

pub(super) fn json(m: &Map<String, Value>) -> String {
    serde_json::to_string(m).expect("a JSON map always serializes")
}

/// A JSON object read back from a text column; `Err(why)` when it is not one.
pub(super) fn json_object(text: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("not a JSON object".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_have_few_shapes() {
        let rows: Vec<u32> = (0..700).collect();
        let sizes: Vec<usize> = statement_chunks(&rows).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![256, 256, 128, 32, 16, 8, 4]);
        assert!(statement_chunks::<u32>(&[]).is_empty());
    }

    #[test]
    fn placeholder_lists() {
        let pg = Dialect::Postgres;
        assert_eq!(placeholders(pg, 2, 2, None), "($1, $2), ($3, $4)");
        assert_eq!(
            placeholders(pg, 2, 2, Some((1, "FALSE"))),
            "($1, FALSE, $2), ($3, FALSE, $4)"
        );
        assert_eq!(placeholders(Dialect::Sqlite, 2, 2, None), "(?, ?), (?, ?)");
        assert_eq!(placeholders_from(pg, 2, 3), "($2, $3, $4)");
    }

    #[test]
    fn nul_never_reaches_a_text_column() {
        assert_eq!(storable("a\0b"), "a\u{FFFD}b");
        let body = json(serde_json::json!({"text": "a\0b"}).as_object().unwrap());
        assert!(!body.contains('\0') && body.contains("\\u0000"), "{body}");
    }

    #[test]
    fn corrupt_json_is_an_error() {
        assert!(json_object("{\"a\":1}").is_ok());
        assert!(json_object("[1]").is_err());
        assert!(json_object("{").is_err());
    }
}
