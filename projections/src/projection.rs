//! The projection contract: a named, versioned, pure fold of log events
//! into SQL tables.

use spool_log::StoredEvent;

use crate::Result;
use crate::views::Connection;

/// One table of a read model. Its statements create the table and its
/// indexes; `{table}` stands for the physical name of the generation being
/// created (such as `event_counts_g3`), so index names stay unique too.
#[derive(Clone, Copy, Debug)]
pub struct Table {
    /// The stable name analysts and typed queries use; a view of this name
    /// points at the serving generation.
    pub name: &'static str,
    pub create: &'static [&'static str],
}

impl Table {
    /// `create` with `{table}` replaced by `physical`.
    pub(crate) fn statements(&self, physical: &str) -> impl Iterator<Item = String> + '_ {
        let physical = physical.to_owned();
        self.create.iter().map(move |statement| statement.replace("{table}", &physical))
    }
}

/// The physical tables of one generation of a projection: every build of a
/// projection writes tables of its own, named `{table}_g{generation}`, so a
/// rebuild never disturbs the tables that serve reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tables {
    pub generation: u64,
}

impl Tables {
    /// The physical name of the logical table `name` in this generation.
    pub fn get(&self, name: &str) -> String {
        physical_name(name, self.generation)
    }
}

pub(crate) fn physical_name(name: &str, generation: u64) -> String {
    format!("{name}_g{generation}")
}

/// A pure fold of the log into SQL tables.
///
/// **Invariant:** a projection reads nothing but the events it is given and
/// its own tables: no clock, no network, no other state. So applying the same
/// events from position zero always yields the same rows, and a rebuild
/// equals what the live runner built.
///
/// # Order
///
/// The log orders events only within a partition, and a stream lives in
/// one partition. A projection may assume that it sees each partition's
/// events in order, so each stream's events in order (and each once); it
/// must not assume anything about the order of events of different
/// partitions: the runner applies batches of different partitions in
/// whatever order they are read, and a rebuild may interleave them
/// differently from the live run. So what one event does to the rows must
/// not depend on having seen an event of another stream first, unless both
/// streams are bound to one partition by the log's rule (which a
/// projection cannot rely on), or the effects commute: counts and sums
/// commute; "insert, then update the row inserted" holds only within one
/// stream.
///
/// Changing what a projection writes (its tables or its fold) means bumping
/// [`Projection::version`]; the runner then rebuilds it from position zero
/// in new tables while the old ones keep serving, and swaps.
#[async_trait::async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Unique among projections; also the registry key. Never reuse one.
    fn name(&self) -> &'static str;

    /// The version of the fold and its tables, starting at 1.
    fn version(&self) -> u32;

    /// The tables this projection writes, created empty for each generation.
    fn tables(&self) -> &'static [Table];

    /// The event types this projection applies (their `TYPE` constants),
    /// if not every type: the runner then reads only those, instead of
    /// decoding every event of the log only for `apply` to skip it. Its
    /// checkpoint still moves past the others. `None` (or an empty list)
    /// reads every event.
    fn event_types(&self) -> Option<&'static [&'static str]> {
        None
    }

    /// Applies `events` (consecutive events of one partition, in order) to
    /// the tables of `tables`, inside the transaction that `connection`
    /// holds. The runner commits that partition's checkpoint in the same
    /// transaction, so each event takes effect exactly once.
    ///
    /// An event that cannot be applied is an error naming it
    /// ([`crate::Error::apply`]); it is never skipped.
    async fn apply(
        &self,
        connection: &mut Connection,
        tables: Tables,
        events: &[StoredEvent],
    ) -> Result<()>;
}
