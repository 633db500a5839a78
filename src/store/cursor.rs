//! Where a page starts, for the reads that page newest first in a total order — (time, id):
//! history by (timestamp, message id), conversations by (receive time, partner id). A total
//! order means a page boundary between two rows of the same millisecond neither repeats nor
//! skips one; the cursor is "strictly before this point".

use super::StoredMessage;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Epoch milliseconds.
    pub at: i64,
    /// None: everything at `at` is excluded (a bare timestamp cursor).
    pub id: Option<String>,
}

impl Cursor {
    /// The cursor of the history page after one that ended with `m`.
    pub fn after(m: &StoredMessage) -> Cursor {
        Cursor {
            at: m.timestamp,
            id: Some(m.message_id.clone()),
        }
    }

    /// `{at}` or `{at}:{id}` (a time has no `:`, so the first one splits them; an id may hold
    /// more), as the HTTP API takes and gives it; `None` when it is neither.
    pub fn parse(s: &str) -> Option<Cursor> {
        let (at, id) = match s.split_once(':') {
            Some((at, id)) => (at, Some(id)),
            None => (s, None),
        };
        let at = at.parse::<i64>().ok()?;
        match id {
            Some(id) if !crate::domain::is_valid_id(id) => None,
            id => Some(Cursor {
                at,
                id: id.map(str::to_owned),
            }),
        }
    }

    /// The text [`Cursor::parse`] reads.
    pub fn render(at: i64, id: &str) -> String {
        format!("{at}:{id}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors() {
        assert_eq!(Cursor::parse("15"), Some(Cursor { at: 15, id: None }));
        assert_eq!(Cursor::parse("15:a:b").unwrap().id.as_deref(), Some("a:b"));
        assert_eq!(Cursor::parse(&Cursor::render(-3, "m")).unwrap().at, -3);
        for bad in ["", "x", "1.5", "15:", "15:a b", "15:a.b"] {
            assert_eq!(Cursor::parse(bad), None, "{bad:?}");
        }
    }
}
