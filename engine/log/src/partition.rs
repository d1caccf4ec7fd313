//! Which partition a stream lives in.
//!
//! Kafka's own rule, so that any Kafka client producing with the same key
//! agrees: the record key is `{tenant}/{stream}`, and the partition is the
//! positive murmur2 hash of the key modulo the partition count, as the Java
//! client's default partitioner (and kafka-python's) computes it.

use spool_schemas::{StreamName, TenantId};

use crate::Append;

/// The record key of a stream's events.
pub fn stream_key(tenant: TenantId, stream: &StreamName) -> String {
    format!("{tenant}/{stream}")
}

/// The partition of `tenant`'s `stream` among `partitions` (at least 1).
pub fn partition_for(tenant: TenantId, stream: &StreamName, partitions: u32) -> u32 {
    partition_of_key(stream_key(tenant, stream).as_bytes(), partitions)
}

/// The partition of a record key among `partitions` (at least 1).
pub fn partition_of_key(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

/// One partition's share of an append.
pub(crate) struct Part {
    pub(crate) partition: u32,
    /// The events and expectations of the append that fall in `partition`.
    pub(crate) append: Append,
    /// Where each of `append.events` is in the whole append.
    pub(crate) indexes: Vec<usize>,
}

/// Splits `append` by partition, in order of first appearance.
pub(crate) fn split(append: &Append, partitions: u32) -> Vec<Part> {
    fn part_of(parts: &mut Vec<Part>, partition: u32) -> &mut Part {
        match parts.iter().position(|part| part.partition == partition) {
            Some(index) => &mut parts[index],
            None => {
                parts.push(Part { partition, append: Append::default(), indexes: Vec::new() });
                parts.last_mut().expect("just pushed")
            }
        }
    }
    let mut parts = Vec::new();
    for (index, event) in append.events.iter().enumerate() {
        let part = part_of(&mut parts, partition_for(event.tenant, &event.stream, partitions));
        part.append.events.push(event.clone());
        part.indexes.push(index);
    }
    for expected in &append.expected {
        let part =
            part_of(&mut parts, partition_for(expected.tenant, &expected.stream, partitions));
        part.append.expected.push(expected.clone());
    }
    parts
}

/// Kafka's murmur2 (seed 0x9747b28c), as `org.apache.kafka.common.utils.Utils`.
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cases of Kafka's own `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_matches_kafka() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
            (b"abc", 479470107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key) as i32, expected, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn one_partition_takes_everything() {
        assert_eq!(partition_of_key(b"anything", 1), 0);
        assert_eq!(partition_of_key(b"anything", 0), 0);
    }
}
