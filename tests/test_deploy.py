"""The deployment files, checked by parsing them (no container engine is needed); nginx, when
installed, checks its config itself."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
# uvicorn's keep-alive timeout (its default, which `cloudpose serve` keeps).
UVICORN_KEEP_ALIVE_S = 5


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def nginx_directives(text: str) -> list[tuple[tuple[str, ...], str, list[str]]]:
    """Every directive of an nginx config as (enclosing blocks, name, arguments)."""
    text = re.sub(r"#[^\n]*", "", text)
    tokens = re.findall(r"'[^']*'|\"[^\"]*\"|[{};]|[^\s{};]+", text)
    directives, blocks, words = [], [], []
    for token in tokens:
        if token == "{":
            blocks.append(" ".join(words))
            words = []
        elif token == "}":
            blocks.pop()
        elif token == ";":
            directives.append((tuple(blocks), words[0], words[1:]))
            words = []
        else:
            words.append(token)
    assert not blocks and not words, "unbalanced nginx config"
    return directives


def directive(name: str, block: str | None = None) -> list[list[str]]:
    """The arguments of each ``name`` directive (inside a block starting with ``block``)."""
    return [
        arguments
        for blocks, found, arguments in nginx_directives(NGINX_CONF.read_text())
        if found == name and (block is None or any(outer.startswith(block) for outer in blocks))
    ]


def nginx_size(value: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    return int(value[:-1]) * units[value[-1].lower()] if value[-1].isalpha() else int(value)


def nginx_seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60}
    number, unit = re.fullmatch(r"(\d+)(ms|s|m)?", value).groups()
    return int(number) * units[unit or "s"]


def test_api_replicas_serve_behind_nginx_with_a_healthcheck_and_the_shared_volume() -> None:
    services = compose()["services"]
    api = services["api"]
    assert api["build"]["target"] == "api"
    assert "ports" not in api  # only the proxy is published
    assert api["deploy"]["replicas"] >= 2
    assert "/health" in " ".join(api["healthcheck"]["test"])
    assert any(volume.startswith("models:") for volume in api["volumes"])
    assert "profiles" not in api  # plain `docker compose up` starts it

    nginx = services["nginx"]
    assert nginx["image"].startswith("nginx:")
    assert nginx["ports"] == ["8000:8000"]
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    assert nginx["depends_on"]["api"]["condition"] == "service_healthy"
    assert "profiles" not in nginx
    if any("resolve" in arguments for arguments in directive("server", "upstream")):
        major, minor = (int(part) for part in nginx["image"].split(":")[1].split("-")[0].split(".")[:2])
        assert (major, minor) >= (1, 28), "the first stable open-source nginx with `resolve` is 1.28"


def test_nginx_proxies_to_the_replicas_with_passive_checks_and_retries() -> None:
    from cloudpose.settings import Settings

    (listen,) = directive("listen", "server")
    assert listen == ["8000"]
    ((upstream_name,),) = directive("proxy_pass", "location")
    assert upstream_name == "http://cloudpose_api"
    (server,) = directive("server", "upstream cloudpose_api")
    assert server[0] == "api:8000"  # the compose service and the port `cloudpose serve` listens on
    options = dict(option.split("=") for option in server[1:] if "=" in option)
    assert int(options["max_fails"]) >= 1 and nginx_seconds(options["fail_timeout"]) > 0
    assert directive("keepalive", "upstream") and directive("proxy_http_version") == [["1.1"]]
    assert ["Connection", '""'] in directive("proxy_set_header")
    # nginx must drop an idle upstream connection before uvicorn does, or it reuses a closing one.
    ((keepalive_timeout,),) = directive("keepalive_timeout", "upstream")
    assert nginx_seconds(keepalive_timeout) < UVICORN_KEEP_ALIVE_S

    (retry_on,) = directive("proxy_next_upstream")
    assert {"error", "timeout", "http_502", "http_503", "non_idempotent"} <= set(retry_on)
    assert directive("proxy_next_upstream_tries") == [["2"]]

    ((body_limit,),) = directive("client_max_body_size")
    assert nginx_size(body_limit) == Settings().max_body_bytes
    for timeout in ("client_header_timeout", "client_body_timeout"):
        ((value,),) = directive(timeout)
        assert 0 < nginx_seconds(value) <= 60
    ((read_timeout,),) = directive("proxy_read_timeout")
    assert nginx_seconds(read_timeout) >= 30  # a hard cloud's answer takes seconds


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    """``nginx -t`` on a copy whose upstream is two local ports (DNS names resolve only in compose)."""
    text = NGINX_CONF.read_text()
    text = re.sub(
        r"server api:8000 resolve ([^;]*);",
        r"server 127.0.0.1:18001 \1;\n        server 127.0.0.1:18002 \1;",
        text,
    )
    assert "127.0.0.1:18002" in text
    text = text.replace("/var/log/nginx/", f"{tmp_path}/")
    (tmp_path / "nginx.conf").write_text(text)
    result = subprocess.run(
        ["nginx", "-t", "-e", "stderr", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")]
        + ["-g", f"pid {tmp_path}/nginx.pid;"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


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
