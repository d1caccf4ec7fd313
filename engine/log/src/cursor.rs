//! Where a reader of the whole log is: one position per partition.

use std::fmt;
use std::str::FromStr;

use spool_schemas::Position;

use crate::{Error, Log, Result};

/// One position per partition: every event at or before its partition's
/// position has been read.
///
/// Written as the positions joined by dots (`"120.0.37"`), so that a
/// one-partition log's cursor is just its position (`"120"`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Cursor(Vec<Position>);

impl Cursor {
    /// Before every event of a log of `partitions` partitions.
    pub fn start(partitions: u32) -> Cursor {
        Cursor(vec![Position::ZERO; partitions.max(1) as usize])
    }

    /// After every event `log` holds now.
    pub fn heads(log: &dyn Log) -> Cursor {
        Cursor((0..log.partitions()).map(|p| *log.head(p).borrow()).collect())
    }

    /// Parses `text` as a cursor for `log`, naming what is wrong if it is not.
    pub fn parse_for(text: &str, log: &dyn Log) -> Result<Cursor> {
        let cursor: Cursor = text.parse()?;
        if cursor.partitions() != log.partitions() {
            return Err(Error::Invalid(format!(
                "cursor {text:?} has {}, one per partition, but the log has {}",
                counted(cursor.partitions(), "position"),
                counted(log.partitions(), "partition")
            )));
        }
        Ok(cursor)
    }

    pub fn partitions(&self) -> u32 {
        self.0.len() as u32
    }

    /// The position in `partition`; `Position::ZERO` beyond the cursor's
    /// partitions.
    pub fn get(&self, partition: u32) -> Position {
        self.0.get(partition as usize).copied().unwrap_or(Position::ZERO)
    }

    /// Moves `partition` to `position`.
    pub fn set(&mut self, partition: u32, position: Position) {
        if let Some(slot) = self.0.get_mut(partition as usize) {
            *slot = position;
        }
    }

    /// Whether some partition of `other` is further than this cursor.
    pub fn is_behind(&self, other: &Cursor) -> bool {
        (0..other.partitions()).any(|p| self.get(p) < other.get(p))
    }
}

fn counted(n: u32, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, position) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(".")?;
            }
            write!(f, "{}", position.0)?;
        }
        Ok(())
    }
}

impl FromStr for Cursor {
    type Err = Error;

    fn from_str(text: &str) -> Result<Cursor> {
        text.split('.')
            .map(|part| part.parse::<u64>().map(Position))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(Cursor)
            .map_err(|_| {
                Error::Invalid(format!(
                    "cursor {text:?} is not positions separated by dots, such as \"120\" or \"120.0.37\""
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_as_written() {
        let mut cursor = Cursor::start(3);
        cursor.set(2, Position(37));
        cursor.set(0, Position(120));
        assert_eq!(cursor.to_string(), "120.0.37");
        assert_eq!("120.0.37".parse::<Cursor>().unwrap(), cursor);
        assert_eq!("7".parse::<Cursor>().unwrap().get(0), Position(7));
        assert!(Cursor::start(3).is_behind(&cursor));
        assert!(!cursor.is_behind(&Cursor::start(3)));
    }

    #[test]
    fn malformed_cursors_are_refused_with_the_reason() {
        for bad in ["", "1..2", "-1", "x", "1.2."] {
            let error = bad.parse::<Cursor>().unwrap_err().to_string();
            assert!(error.contains("positions separated by dots"), "{bad}: {error}");
        }
    }
}
