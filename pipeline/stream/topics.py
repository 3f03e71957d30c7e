"""Kafka administration of the pipeline's topics."""

from __future__ import annotations

import contextlib

from kafka.errors import TopicAlreadyExistsError

from pipeline.config.stream import StreamConfig
from pipeline.stream import kafka_client


def ensure_topics(cfg: StreamConfig, extra: dict[str, int] | None = None) -> None:
    """Create the four topics, and ``extra`` ones (name -> partitions), when missing
    (idempotent)."""
    k, t = cfg.kafka, cfg.topics
    admin = kafka_client.admin(k, "admin")
    try:
        existing = set(admin.list_topics())
        wanted = {
            t.frames: k.frames_partitions,
            t.detections: k.output_partitions,
            t.identities: k.output_partitions,
            t.dlq: k.output_partitions,
            **(extra or {}),
        }
        missing = {
            name: {"num_partitions": n, "replication_factor": k.replication_factor}
            for name, n in wanted.items()
            if name not in existing
        }
        if missing:
            # Another runner may create them at the same moment.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing, wait_for_metadata=True)
    finally:
        admin.close()


def topic_partitions(cfg: StreamConfig, topic: str) -> list[int]:
    consumer = kafka_client.consumer(cfg.kafka, "meta")
    try:
        return sorted(consumer.partitions_for_topic(topic) or [])
    finally:
        consumer.close()
