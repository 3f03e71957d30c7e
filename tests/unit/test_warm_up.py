"""The stream's first-call costs are paid before a replica or worker takes frames
(measured on the shared clip: a new camera's first second waited up to 0.8 s on them).
Each warm-up is best effort: what fails is done by the first request instead."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
import pytest

from pipeline.config.face import FaceConfig
from pipeline.config.stream import StreamConfig
from pipeline.face.embed import Embedder
from pipeline.serve import analyzer as analyzer_module
from pipeline.serve.analyzer import FrameAnalyzerDeployment
from pipeline.stream.dispatch import Dispatcher


class Response:
    """A Serve response: awaitable (in a replica) and ``result`` (in a worker)."""

    def __init__(self, value: Any = None, error: Exception | None = None) -> None:
        self.value, self.error = value, error

    def result(self, timeout_s: float | None = None) -> Any:
        if self.error is not None:
            raise self.error
        return self.value

    def __await__(self) -> Any:
        yield from asyncio.sleep(0).__await__()
        return self.result()


class Method:
    def __init__(self, value: Any = None, error: Exception | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.value, self.error = value, error

    def remote(self, *args: Any) -> Response:
        self.calls.append(args)
        return Response(self.value, self.error)


class Handle:
    def __init__(self, **methods: Method) -> None:
        self.__dict__.update(methods)


def test_a_worker_looks_the_analyzers_up_with_one_empty_request() -> None:
    handle = Handle(analyze=Method([]))
    Dispatcher(handle, StreamConfig()).warm_up()
    assert handle.analyze.calls == [([],)]


def test_a_worker_whose_analyzers_are_not_up_yet_still_starts() -> None:
    handle = Handle(analyze=Method(error=TimeoutError("no replica")))
    Dispatcher(handle, StreamConfig()).warm_up()  # no exception: the first frames look up
    assert handle.analyze.calls == [([],)]


def test_the_embedder_runs_one_blank_chip_of_its_input_size(embedder: Embedder) -> None:
    shapes: list[tuple[int, ...]] = []

    def backend(chips: np.ndarray) -> np.ndarray:
        shapes.append(chips.shape)
        return np.asarray(embedder.backend(chips))

    Embedder(embedder.manifest, backend).warm_up()
    w, h = embedder.manifest.preprocessing.input_size
    flips = 2 if embedder.manifest.preprocessing.tta == "flip" else 1
    assert shapes == [(flips, h, w, 3)]


def _analyzer(
    monkeypatch: pytest.MonkeyPatch, embedder: Embedder, info_error: Exception | None = None
) -> tuple[FrameAnalyzerDeployment, dict[str, Handle]]:
    info = {
        "alignment": embedder.manifest.alignment.model_dump(mode="json"),
        "template_digest": "digest-1",
    }
    handles = {
        "embedder": Handle(info=Method(info, info_error)),
        "search": Handle(stats=Method({"pairs": []})),
    }
    monkeypatch.setattr(
        analyzer_module.serve,
        "get_deployment_handle",
        lambda name, app_name: handles["embedder" if "embed" in app_name else "search"],
    )
    cls = FrameAnalyzerDeployment.func_or_class
    replica = cls.__new__(cls)

    async def construct() -> None:  # as Serve does: the constructor is a coroutine
        await replica.__init__(FaceConfig(), "test-embedder", "test-search", 5.0)

    asyncio.run(construct())
    return replica, handles


def test_an_analyzer_replica_is_ready_before_its_first_frame(
    monkeypatch: pytest.MonkeyPatch, embedder: Embedder, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=analyzer_module.__name__):
        replica, handles = _analyzer(monkeypatch, embedder)
    assert "warm-up" not in caplog.text
    # The alignment asked of the embedder, the detector run once, the search looked up.
    assert replica.pipeline is not None and replica.template_digest == "digest-1"
    assert len(handles["embedder"].info.calls) == 1
    assert len(handles["search"].stats.calls) == 1


def test_an_analyzer_replica_starts_when_the_embedder_is_not_up_yet(
    monkeypatch: pytest.MonkeyPatch, embedder: Embedder, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=analyzer_module.__name__):
        replica, _ = _analyzer(monkeypatch, embedder, info_error=TimeoutError("no replica"))
    assert "warm-up incomplete: no replica" in caplog.text
    assert replica.pipeline is None  # the first request asks for the alignment, as before
