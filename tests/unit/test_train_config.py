"""Training run specs: validated at start-up with the field and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config.train import (
    ArcFaceLossConfig,
    TrainConfigError,
    TrainSettings,
    check_paths,
    load_train_config,
    loss_config,
)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "spec.toml"
    p.write_text(text)
    return p


def test_minimal_spec_gets_defaults_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "faces").mkdir()
    cfg = load_train_config(write(tmp_path, '[data]\nroot = "faces"\n'))
    assert cfg.data.root == tmp_path / "faces"  # relative to the spec, not the cwd
    assert isinstance(cfg.loss, ArcFaceLossConfig)
    assert (cfg.sampler.p, cfg.sampler.k, cfg.num_workers, cfg.use_gpu) == (8, 4, 1, False)
    check_paths(cfg)


def test_loss_hyper_parameters_by_name(tmp_path: Path) -> None:
    spec = write(tmp_path, '[data]\nroot = "x"\n[loss]\nname = "combined"\nm1 = 1.0\nm2 = 0.4\n')
    cfg = load_train_config(spec)
    assert cfg.loss.name == "combined"
    assert cfg.loss.m2 == 0.4  # type: ignore[union-attr]  # the union's member by its name


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[data]\nroot = "x"\n[loss]\nname = "arcfase"\n', "arcfase"),
        ('[data]\nroot = "x"\n[loss]\nname = "arcface"\nmargn = 0.3\n', "margn"),
        ('[data]\nroot = "x"\n[loss]\nname = "sphereface"\nmargin = 0\n', "margin"),
        ('[data]\nroot = "x"\n[sampler]\np = 1\n', "p"),
        ('[data]\nroot = "x"\nmanifest = "m.csv"\n', "exactly one"),
        ("[data]\n", "exactly one"),
        ('[data]\nroot = "x"\nfreeze = 17\n', "freeze"),
        ('[data]\nroot = "x"\n[data.extra]\n', "extra"),
        (
            'epochs = 1\nsteps_per_epoch = 3\n[data]\nroot = "x"\n[optim]\nwarmup_steps = 5\n',
            "warmup",
        ),
        ('[data\nroot = "x"\n', "invalid TOML"),
    ],
)
def test_bad_specs_fail_with_the_field(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(TrainConfigError, match=needle):
        load_train_config(write(tmp_path, text))


def test_overrides_and_deployment_defaults(tmp_path: Path) -> None:
    spec = write(tmp_path, '[data]\nmanifest = "m.csv"\n[loss]\nname = "arcface"\nmargin = 0.45\n')
    defaults = TrainSettings(num_workers=2, use_gpu=True, checkpoint_dir="s3://b/train")
    cfg = load_train_config(
        spec,
        defaults,
        **{"loss.name": "triplet", "epochs": 7, "data.root": str(tmp_path), "freeze": None},
    )
    # another loss: arcface's margin does not leak into it (triplet's default is 0.2)
    assert cfg.loss.name == "triplet" and cfg.loss.margin == 0.2  # type: ignore[union-attr]  # the union's member by its name  # the union's member by its name
    assert cfg.epochs == 7 and cfg.freeze == 0  # None means "not given"
    assert cfg.data.root == tmp_path and cfg.data.manifest is None  # --data replaces both
    assert (cfg.num_workers, cfg.use_gpu, cfg.checkpoint_dir) == (2, True, "s3://b/train")


def test_spec_value_beats_deployment_default(tmp_path: Path) -> None:
    spec = write(tmp_path, 'num_workers = 3\n[data]\nroot = "x"\n')
    cfg = load_train_config(spec, TrainSettings(num_workers=2))
    assert cfg.num_workers == 3


def test_check_paths_names_the_missing_folder(tmp_path: Path) -> None:
    cfg = load_train_config(write(tmp_path, '[data]\nroot = "nowhere"\n'))
    with pytest.raises(TrainConfigError, match="nowhere"):
        check_paths(cfg)


def test_loss_config_helper_validates() -> None:
    assert loss_config("cosface", margin=0.2).margin == 0.2  # type: ignore[union-attr]  # the union's member by its name
    with pytest.raises(ValueError, match="margin"):
        loss_config("cosface", margin=2.0)
