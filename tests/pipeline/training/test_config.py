from pathlib import Path

import pytest

from pipeline.training.config import ConfigError, TrainConfig, load_config


def test_defaults_are_valid() -> None:
    cfg = load_config()
    assert cfg == TrainConfig()
    assert cfg.n_points == 1024 and cfg.hidden == []


def test_yaml_overrides_defaults_and_flags_override_yaml(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("n_points: 100\nlr: 0.01\nhidden: [32, 16]\n")
    cfg = load_config(path, {"lr": 0.5, "seed": None})
    assert cfg.n_points == 100  # from the file
    assert cfg.hidden == [32, 16]
    assert cfg.lr == 0.5  # the flag wins
    assert cfg.seed == 0  # an unset flag leaves the default


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(None, {"n_points": 0, "lr": -1.0, "activation": "tanh", "device": "tpu"})
    message = str(raised.value)
    for expected in (
        "n_points must be a positive integer",
        "lr must be a number > 0",
        "activation must be one of",
        "device must be",
    ):
        assert expected in message


def test_unknown_keys_and_bad_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown keys learning_rate"):
        load_config(None, {"learning_rate": 0.1})
    broken = tmp_path / "broken.yaml"
    broken.write_text("n_points: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(listing)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="mesh file not found"):
        load_config(None, {"mesh": str(tmp_path / "nothing.ply")})


def test_shipped_configs_load() -> None:
    root = Path(__file__).resolve().parents[3] / "configs"
    for path in root.glob("*.yaml"):
        load_config(path)
