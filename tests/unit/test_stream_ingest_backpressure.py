"""Ingest backpressure: frames beyond the in-flight limit are dropped and counted (live
sources) or waited for (files read flat out); failed sends are counted too.

The producer here holds kafka-python's own futures so the test decides when Kafka
"acknowledges"; everything else is the real ingester.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from kafka.future import Future

from pipeline.config.stream import CameraConfig, StreamConfig
from pipeline.stream.ingest import CameraIngester


class HeldProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, list[tuple[str, bytes]]]] = []
        self.futures: list[Future] = []

    def send(self, topic: str, *, key: bytes, value: bytes, headers: Any) -> Future:
        self.sent.append((topic, key, headers))
        fut = Future()
        self.futures.append(fut)
        return fut

    def flush(self, timeout: float | None = None) -> None:
        pass


def _cfg(limit: int) -> StreamConfig:
    return StreamConfig.model_validate({"ingest": {"max_in_flight": limit}})


BGR = np.zeros((24, 32, 3), dtype=np.uint8)


def test_live_source_drops_and_counts_beyond_the_limit() -> None:
    producer = HeldProducer()
    ing = CameraIngester(CameraConfig(id="cam", url="rtsp://cam/1"), _cfg(2), producer)  # type: ignore[arg-type]  # a producer that holds its sends
    results = [ing.produce(BGR, None) for _ in range(5)]
    assert results == [True, True, False, False, False]
    assert ing.stats.dropped["backpressure"] == 3
    producer.futures[0].success("meta")
    assert ing.stats.produced == 1 and ing.stats.in_flight == 1
    assert ing.produce(BGR, None)  # room again
    producer.futures[1].failure(RuntimeError("broker gone"))
    assert ing.stats.dropped["send_failed"] == 1
    # Every sampled frame is accounted for: acked, failed, dropped or still in flight.
    assert ing.stats.sent == 3 and ing.stats.in_flight == 1
    seqs = [dict(h)["fs.seq"] for _, _, h in producer.sent]
    assert seqs == [b"0", b"1", b"2"]  # dropped frames take no seq


def test_file_read_flat_out_waits_instead_of_dropping() -> None:
    producer = HeldProducer()
    cam = CameraConfig(id="cam", url="/clips/a.mp4", realtime=False)
    ing = CameraIngester(cam, _cfg(1), producer)  # type: ignore[arg-type]  # a producer that holds its sends
    assert ing.produce(BGR, 0.0)
    done = threading.Event()

    def second() -> None:
        ing.produce(BGR, 40.0)
        done.set()

    t = threading.Thread(target=second)
    t.start()
    assert not done.wait(0.3)  # blocked on the in-flight limit
    producer.futures[0].success("meta")
    assert done.wait(10)
    t.join(10)
    assert ing.stats.sent == 2 and not ing.stats.dropped
