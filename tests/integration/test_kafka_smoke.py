"""Round-trip through a real Kafka broker: produce 1,000 records, consume them in a group."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

pytestmark = pytest.mark.integration

N_MESSAGES = 1_000
PARTITIONS = 4


def _records() -> list[tuple[bytes, bytes]]:
    # Keys repeat (and so spread over partitions by hash); values are unique, so a lost or
    # duplicated record changes the multiset.
    return [
        (f"camera-{i % 13}".encode(), f"frame-{i}:".encode() + bytes([i % 256]) * 32)
        for i in range(N_MESSAGES)
    ]


def test_produce_consume_commit_round_trip(kafka_bootstrap: str) -> None:
    topic = f"smoke-{uuid.uuid4().hex[:12]}"
    group = f"smoke-group-{uuid.uuid4().hex[:12]}"

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics(
            {topic: {"num_partitions": PARTITIONS, "replication_factor": 1}},
            wait_for_metadata=True,
        )
        assert topic in admin.list_topics()
    finally:
        admin.close()

    sent = _records()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
    try:
        futures = [producer.send(topic, key=key, value=value) for key, value in sent]
        producer.flush(timeout=30)
        metadata = [future.get(timeout=30) for future in futures]
    finally:
        producer.close()
    assert {m.partition for m in metadata} == set(range(PARTITIONS))

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    try:
        received: list[tuple[bytes, bytes]] = []
        deadline = time.monotonic() + 60
        while len(received) < N_MESSAGES and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                received.extend((r.key, r.value) for r in records)
        # One more poll: anything beyond the 1,000 would be a duplicate.
        for records in consumer.poll(timeout_ms=1_000).values():
            received.extend((r.key, r.value) for r in records)

        assert len(received) == N_MESSAGES
        assert Counter(received) == Counter(sent)

        consumer.commit()
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        end_offsets = consumer.end_offsets(partitions)
        assert sum(end_offsets.values()) == N_MESSAGES
        for tp in partitions:
            assert consumer.committed(tp) == end_offsets[tp], tp
    finally:
        consumer.close()
