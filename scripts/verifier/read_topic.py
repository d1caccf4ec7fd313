"""Reads a Spool topic with kafka-python, an independent Kafka client, and
prints what it found as one JSON object on stdout:

    {"records": [{"partition": 0, "offset": 0, "key": "...", "id": "evt_...",
                  "type": "...", "stream": "...", "stream_version": 1,
                  "data": {...}, "expected_partition": 0}, ...]}

`expected_partition` is the partition kafka-python's own default
partitioner picks for the record's key, so the caller can check that
Spool partitions as every Kafka client does.

Usage: read_topic.py BROKERS TOPIC EXPECTED_RECORDS
"""

import json
import sys
import time

from kafka import KafkaConsumer, TopicPartition
from kafka.partitioner.default import murmur2


def main() -> None:
    brokers, topic, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
    consumer = KafkaConsumer(
        bootstrap_servers=brokers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        consumer_timeout_ms=1000,
    )
    partitions = sorted(consumer.partitions_for_topic(topic) or [])
    if not partitions:
        sys.exit(f"topic {topic} has no partitions")
    consumer.assign([TopicPartition(topic, p) for p in partitions])
    consumer.seek_to_beginning()
    records = []
    deadline = time.monotonic() + 30
    while len(records) < expected and time.monotonic() < deadline:
        for message in consumer:
            envelope = json.loads(message.value)
            records.append(
                {
                    "partition": message.partition,
                    "offset": message.offset,
                    "key": message.key.decode(),
                    "id": envelope["id"],
                    "type": envelope["type"],
                    "stream": envelope["stream"],
                    "stream_version": envelope["stream_version"],
                    "data": envelope["data"],
                    "expected_partition": (murmur2(message.key) & 0x7FFFFFFF) % len(partitions),
                }
            )
            if len(records) >= expected:
                break
    consumer.close()
    json.dump({"records": records}, sys.stdout)


if __name__ == "__main__":
    main()
