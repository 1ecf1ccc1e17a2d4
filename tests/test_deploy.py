"""The deployment files, checked by parsing them (no container engine is needed)."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_api_service_serves_with_a_healthcheck_and_the_shared_volume() -> None:
    api = compose()["services"]["api"]
    assert api["build"]["target"] == "api"
    assert "8000:8000" in api["ports"]
    assert "/health" in " ".join(api["healthcheck"]["test"])
    assert any(volume.startswith("models:") for volume in api["volumes"])
    assert "profiles" not in api  # plain `docker compose up` starts it


def test_trainer_reserves_a_gpu_behind_a_profile() -> None:
    spec = compose()
    trainer = spec["services"]["trainer"]
    assert trainer["profiles"] == ["train"]
    devices = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"
    assert any(volume.startswith("models:") for volume in trainer["volumes"])
    assert "models" in spec["volumes"]


def test_dockerfile_stages_use_the_install_script() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = {line.split(" AS ")[1].strip() for line in dockerfile.splitlines() if line.startswith("FROM ")}
    assert {"api", "trainer"} <= stages
    api_stage = dockerfile.split("AS api")[1]
    assert "scripts/install.sh serve" in api_stage  # the serving image installs no torch
    assert "scripts/install.sh train" in dockerfile.split("AS trainer")[1]
    assert "COPY models ./models" in dockerfile  # bundles the shipped model
    bundled = (ROOT / "scripts" / "docker-api.sh").read_text().split("else store=")[1].split(";")[0]
    assert (ROOT / bundled.removeprefix("/app/") / "bunny" / "object.json").is_file()
    for script in ("docker-api.sh", "docker-train.sh", "install.sh"):
        assert (ROOT / "scripts" / script).stat().st_mode & 0o111


def test_the_serve_extra_leaves_torch_out() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    serve = " ".join(project["optional-dependencies"]["serve"] + project["dependencies"])
    assert "torch" not in serve and "onnxruntime" in serve
