"""Frame accounting: was every produced frame processed exactly once?

Reads the frames topic, ``facestream.detections`` and ``facestream.frames.dlq`` in full
and checks the pipeline's promise: every frame (``camera:seq``) appears, after dropping
repeated event ids, exactly once in the detections or in the dead-letter topic — never
in neither (lost) and never in both. Records without a camera or seq are identified by
``topic:partition:offset`` and must be in the DLQ.

Meant for tests and for operators checking a deployment; it reads whole topics, so run
it on bounded data (a test, a replay), not on months of production traffic.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pipeline.config.stream import KafkaConfig, StreamConfig
from pipeline.stream import kafka_client
from pipeline.stream.codec import H_SEQ, camera_from_key, frame_event_id, headers_dict


@dataclass
class TopicDump:
    topic: str
    records: list[Any] = field(default_factory=list)

    def json(self) -> list[dict[str, Any]]:
        return [json.loads(r.value) for r in self.records]


@dataclass
class Accounting:
    frames: set[str]  # ids of every record in the frames topic
    detections: Counter[str]  # event id -> copies published
    dlq: Counter[str]
    lost: set[str]  # in neither output
    in_both: set[str]  # in the detections and in the DLQ
    unexpected: set[str]  # output ids that match no frame

    @property
    def ok(self) -> bool:
        return not (self.lost or self.in_both or self.unexpected)

    @property
    def duplicates(self) -> int:
        """Repeated copies (at-least-once replays), dropped by event id."""
        return sum(n - 1 for n in self.detections.values()) + sum(n - 1 for n in self.dlq.values())

    def describe(self) -> str:
        def few(ids: set[str]) -> str:
            return ", ".join(sorted(ids)[:10]) + (" …" if len(ids) > 10 else "")

        return (
            f"{len(self.frames)} frames, {len(self.detections)} detected, {len(self.dlq)} "
            f"dead-lettered, {self.duplicates} duplicates; lost [{few(self.lost)}], in both "
            f"[{few(self.in_both)}], unexpected [{few(self.unexpected)}]"
        )


def read_all(
    bootstrap: str, topic: str, timeout_s: float = 60.0, kafka: KafkaConfig | None = None
) -> TopicDump:
    """Every record currently in ``topic`` (all partitions, up to the end offsets)."""
    from kafka import TopicPartition

    consumer = kafka_client.consumer(kafka_client.with_bootstrap(bootstrap, kafka), "audit")
    dump = TopicDump(topic)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return dump
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} did not reach its end in {timeout_s}s")
            for records in consumer.poll(timeout_ms=500).values():
                dump.records.extend(records)
        return dump
    finally:
        consumer.close()


def frame_id(record: Any) -> str:
    """``camera:seq`` of a frames-topic record, else ``topic:partition:offset``."""
    seq = headers_dict(record.headers).get(H_SEQ, "")
    camera = camera_from_key(record.key)  # the DLQ's rule, so both name a record alike
    if camera is not None and seq.isdigit():
        return frame_event_id(camera, int(seq))
    return f"{record.topic}:{record.partition}:{record.offset}"


def account(cfg: StreamConfig) -> Accounting:
    """Check the frames topic against the detections and the DLQ."""
    assert cfg.kafka.bootstrap_servers, "stream.kafka.bootstrap_servers is not set"
    b, t = cfg.kafka.bootstrap_servers, cfg.topics
    frames = {frame_id(r) for r in read_all(b, t.frames, kafka=cfg.kafka).records}
    det = Counter(str(e["event_id"]) for e in read_all(b, t.detections, kafka=cfg.kafka).json())
    dlq = Counter(str(e["event_id"]) for e in read_all(b, t.dlq, kafka=cfg.kafka).json())
    return Accounting(
        frames=frames,
        detections=det,
        dlq=dlq,
        lost=frames - set(det) - set(dlq),
        in_both=set(det) & set(dlq),
        unexpected=(set(det) | set(dlq)) - frames,
    )
