"""Throughput and latency of cloudpose under load: wrk posting posed bunny clouds on loopback.

Starts ``cloudpose serve --workers K`` on a free port (or, with ``--replicas R --nginx``, R servers
behind a local nginx running a copy of ``deploy/nginx.conf``), or measures ``--url``. For each
body kind (JSON, ``.npy`` multipart) and each concurrency (1, 8, 64 connections), wrk keeps that
many requests in flight for ``--duration-s`` seconds, each request a different posed sample of
the bunny (``--points`` points, ``--distinct-clouds`` of them in turn), and the script prints
requests per second, p50/p99 latency and every non-200 answer or socket error.

wrk (C, one thread, a Lua script that posts pre-built bodies) is the generator because it leaves
the server the most CPU: a Python generator needs about a core of its own to send a few
hundred requests a second. It is a closed loop: a slow answer delays the next request on its
connection, so latency is what a client with that many requests in flight sees.

With ``--model EXAM.onnx`` the servers serve an exam-setting model (``cloudpose export`` of a
flattened-FC run, e.g. of ``configs/default.yaml``) instead of the object store, and the bodies
are posed copies of its template: the exam's setting, whose pose is one matrix product, so the
table shows what the HTTP path itself sustains.

During a run, ``--reload-every-s S`` calls ``POST /v1/admin/reload`` every S seconds (on every
replica; a started server gets a generated CLOUDPOSE_API_KEYS key, ``--api-key`` serves for
``--url``), and ``--kill-one-replica-at-s T`` (with ``--replicas 2 --nginx``) kills one replica with
SIGKILL T seconds in, then restarts it before the next run: the errors column shows what
clients saw of either.

Usage::

    .venv/bin/python benchmarks/load.py [--duration-s 60] [--workers 2] [--concurrency 1,8,64]
        [--bodies json,npy] [--url http://127.0.0.1:8000] [--replicas 2 --nginx] [--model EXAM.onnx]
        [--reload-every-s 5] [--kill-one-replica-at-s 20] [--json-out load.json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import serving

WRK_SCRIPT = r"""
-- Arguments: path, content type, API key (or ""), body files. Posts the bodies in turn, counts
-- every status and prints one JSON line at the end.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  path = args[1]
  headers = {["Content-Type"] = args[2]}
  if args[3] ~= "" then
    headers["Authorization"] = "Bearer " .. args[3]
  end
  bodies = {}
  for i = 4, #args do
    local file = assert(io.open(args[i], "rb"))
    bodies[#bodies + 1] = file:read("*a")
    file:close()
  end
  statuses = {}
  index = 0
end

function request()
  index = index % #bodies + 1
  return wrk.format("POST", path, headers, bodies[index])
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      merged[status] = (merged[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(merged) do
    parts[#parts + 1] = string.format('"%d": %d', status, count)
  end
  local errors = summary.errors
  io.write(string.format(
    'CLOUDPOSE_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, '
      .. '"max_us": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d, '
      .. '"statuses": {%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, errors.connect, errors.read, errors.write, errors.timeout,
    table.concat(parts, ", ")))
end
"""
BODY_KINDS = ("json", "npy")
POSE_TOLERANCE = 0.01  # of the bunny's diameter: a refined answer is far closer


def posed_cloud(points: int, seed: int, exam_model: Path | None) -> serving.PosedCloud:
    """A posed bunny sample, or the exam-setting model's template posed (``--model``)."""
    if exam_model is not None:
        return serving.posed_template(exam_model, seed)
    return serving.posed_bunny(points, seed=seed)


def build_bodies(
    kind: str, points: int, count: int, folder: Path, exam_model: Path | None = None
) -> tuple[list[Path], str]:
    """``count`` bodies of distinct posed bunny clouds written to files, and their content type."""
    paths, content_type = [], "application/json"
    for index in range(count):
        cloud = posed_cloud(points, index, exam_model)
        if kind == "json":
            body = serving.json_body(cloud.observed)
        else:
            body, content_type = serving.npy_multipart_body(cloud.observed)
        path = folder / f"{kind}-{index}.body"
        path.write_bytes(body)
        paths.append(path)
    return paths, content_type


def check_answers(
    url: str, points: int, api_key: str | None, path: str = "/v1/pose", exam_model: Path | None = None
) -> list[str]:
    """One request of each body kind, its pose checked against the cloud; a line per kind."""
    import httpx

    lines = []
    cloud = posed_cloud(points, 10_000, exam_model)
    npy, npy_type = serving.npy_multipart_body(cloud.observed)
    bodies = {"json": (serving.json_body(cloud.observed), "application/json"), "npy": (npy, npy_type)}
    for kind, (body, content_type) in bodies.items():
        headers = {"content-type": content_type, **serving.auth_headers(api_key)}
        response = httpx.post(f"{url}{path}", content=body, headers=headers, timeout=60)
        if response.status_code != 200:
            raise RuntimeError(f"{kind} body: {response.status_code} {response.text[:300]}")
        error = serving.pose_error(response.json(), cloud)
        verdict = "ok" if error < POSE_TOLERANCE * serving.bunny_diameter() else "WRONG"
        lines.append(f"{kind} body: pose error {error:.2e} bunny units ({verdict})")
    return lines


class Reloader(threading.Thread):
    """Calls ``POST /v1/admin/reload`` on each URL every ``every_s`` seconds until stopped."""

    def __init__(self, urls: list[str], every_s: float, api_key: str | None) -> None:
        super().__init__(daemon=True)
        self.urls, self.every_s = urls, every_s
        self.headers = serving.auth_headers(api_key)
        self.statuses: list[int | str] = []
        self.latencies_s: list[float] = []
        self.absent = False
        self.stopped = threading.Event()

    def run(self) -> None:
        import httpx

        next_call = time.monotonic() + self.every_s
        with httpx.Client(timeout=60.0) as client:
            # On a fixed schedule: a reload that takes longer than every_s delays only the next one.
            while not self.stopped.wait(max(0.0, next_call - time.monotonic())):
                next_call += self.every_s
                for url in self.urls:
                    started = time.perf_counter()
                    try:
                        status: int | str = client.post(
                            f"{url}/v1/admin/reload", headers=self.headers
                        ).status_code
                    except httpx.HTTPError as error:
                        status = type(error).__name__
                    if status in (404, 405):
                        self.absent = True
                        return
                    self.statuses.append(status)
                    self.latencies_s.append(time.perf_counter() - started)

    def stop(self) -> str:
        """Stop, and describe what the reloads got."""
        self.stopped.set()
        self.join()
        if self.absent:
            return "reload: the service has no POST /v1/admin/reload (404): skipped"
        timing = serving.percentiles_ms(self.latencies_s)
        return (
            f"reloads: {serving.status_counts(self.statuses)}, p50 {serving.fmt_ms(timing['p50_ms'])} ms, "
            f"max {serving.fmt_ms(timing['max_ms'])} ms"
        )


def run_wrk(
    url: str,
    concurrency: int,
    duration_s: int,
    timeout_s: float,
    bodies: list[Path],
    content_type: str,
    api_key: str | None,
    folder: Path,
    path: str = "/v1/pose",
) -> dict[str, Any]:
    """One wrk run; its result line, plus the CPU seconds wrk used."""
    script = folder / "post.lua"
    script.write_text(WRK_SCRIPT)
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{duration_s}s", f"--timeout={timeout_s:g}s"]
    command += ["-s", str(script), f"{url}{path}", "--", path, content_type, api_key or ""]
    command += map(str, bodies)
    with open(folder / "wrk.out", "w+b") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        # wait4 gives wrk's own CPU time, apart from any other child (a killed replica).
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        text = output.read().decode(errors="replace")
    line = next((line for line in text.splitlines() if line.startswith("CLOUDPOSE_RESULT ")), None)
    if process.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{text[-2000:]}")
    result = json.loads(line.removeprefix("CLOUDPOSE_RESULT "))
    result["wrk_cpu_s"] = usage.ru_utime + usage.ru_stime
    return result


def describe(result: dict[str, Any]) -> tuple[int, str]:
    """The failed requests of a wrk result (non-200 answers and socket errors), and what they were."""
    failed = {f"{status}": count for status, count in result["statuses"].items() if status != "200"}
    for name in ("connect", "read", "write", "timeout"):
        if result[name]:
            failed[name] = result[name]
    text = " ".join(f"{name}×{count}" for name, count in sorted(failed.items())) or "-"
    return sum(failed.values()), text


class Topology:
    """What is measured: started servers (and nginx in front) or a running service at a URL."""

    def __init__(self, url: str, servers: list[serving.Server], nginx: serving.Server | None) -> None:
        self.url, self.servers, self.nginx = url, servers, nginx

    def pids(self) -> list[int]:
        """The processes whose CPU time counts as the server's."""
        return [server.pid for server in self.servers] + ([self.nginx.pid] if self.nginx else [])

    def access_log(self) -> Path | None:
        return self.nginx.log_path.with_name("access.log") if self.nginx else None

    def retried_by_nginx(self, offset: int) -> int:
        """Requests that nginx sent to a second replica, in its access log from byte ``offset``."""
        log = self.access_log()
        if log is None:
            return 0
        with open(log, "rb") as file:
            file.seek(offset)
            lines = file.read().decode(errors="replace").splitlines()
        # "$upstream_addr" lists each replica tried: "127.0.0.1:A, 127.0.0.1:B" for a retry.
        return sum(", " in line.split(" upstream ", 1)[-1] for line in lines)


def one_run(
    topology: Topology,
    kind: str,
    concurrency: int,
    bodies: tuple[list[Path], str],
    args: argparse.Namespace,
    api_key: str | None,
    env: dict[str, str],
    folder: Path,
) -> tuple[list[object], dict[str, Any]]:
    """One wrk run with its reloads or replica kill; its table row and its result."""
    measured = topology.pids()
    log = topology.access_log()
    log_offset = log.stat().st_size if log else 0
    cpu_before = sum(serving.cpu_seconds(pid) for pid in measured)
    reloader = killer = victim = None
    if args.reload_every_s:
        urls = [server.url for server in topology.servers] or [topology.url]
        reloader = Reloader(urls, args.reload_every_s, api_key)
        reloader.start()
    if args.kill_one_replica_at_s is not None:
        victim = topology.servers[-1]
        measured.remove(victim.pid)  # its CPU time dies with it
        cpu_before -= serving.cpu_seconds(victim.pid)
        killer = threading.Timer(args.kill_one_replica_at_s, lambda: os.killpg(victim.pid, signal.SIGKILL))
        killer.start()
    started = time.monotonic()
    result = run_wrk(
        topology.url, concurrency, args.duration_s, args.timeout_s, *bodies, api_key, folder, args.path
    )
    wall_s = time.monotonic() - started
    server_cpu_s = sum(serving.cpu_seconds(pid) for pid in measured) - cpu_before
    retried = topology.retried_by_nginx(log_offset)
    events = [reloader.stop()] if reloader else []
    if killer:
        killer.join()
        victim.process.wait(timeout=30)
        events.append(f"replica on :{victim.port} killed at {args.kill_one_replica_at_s:g} s")
        topology.servers[-1] = serving.start_server(
            victim.log_path,
            workers=args.workers,
            port=victim.port,
            env=env,
            extra_args=["--model", str(args.model.resolve())] if args.model else (),
        )
        time.sleep(6)  # past nginx's fail_timeout, so the next run starts with every replica
    if topology.nginx:
        events.append(f"{retried} request(s) retried by nginx on another replica")
    failed, failures = describe(result)
    rate = result["requests"] / (result["duration_us"] / 1e6)
    row = [
        kind,
        concurrency,
        result["requests"],
        f"{rate:.1f}",
        f"{result['p50_us'] / 1000:.1f}",
        f"{result['p99_us'] / 1000:.1f}",
        failed,
        failures,
        f"{100 * server_cpu_s / wall_s:.0f}%" if measured else "-",
        f"{100 * result['wrk_cpu_s'] / wall_s:.0f}%",
    ]
    print(f"  {kind} c={concurrency}: {rate:.1f} req/s, errors {failures}", flush=True)
    return row, {"body": kind, "concurrency": concurrency, **result, "events": events}


def validate(args: argparse.Namespace) -> None:
    """Every problem with the options at once."""
    problems = []
    if args.kill_one_replica_at_s is not None:
        if args.replicas < 2 or not args.nginx:
            problems.append("--kill-one-replica-at-s needs --replicas 2 (or more) and --nginx")
        if args.kill_one_replica_at_s >= args.duration_s:
            problems.append("--kill-one-replica-at-s must come before the end of --duration-s")
    if args.url and (args.replicas != 1 or args.nginx or args.workers != 1):
        problems.append("--url measures a running service: --replicas, --nginx and --workers do not apply")
    if args.model is not None:
        if args.url:
            problems.append("--model starts servers: it does not apply with --url")
        sidecar = args.model.with_name("model.json")
        if not sidecar.is_file() or not args.model.with_name("template.npy").is_file():
            problems.append(f"--model {args.model}: no exported model with model.json and template.npy there")
        elif json.loads(sidecar.read_text()).get("order_free"):
            problems.append(f"--model {args.model} is order-free: give an exam-setting (flat_fc) model")
    if args.replicas < 1 or args.workers < 1:
        problems.append("--replicas and --workers must be 1 or more")
    if shutil.which("wrk") is None:
        problems.append("wrk is not installed (apt-get install wrk)")
    if args.nginx and shutil.which("nginx") is None:
        problems.append("nginx is not installed (apt-get install nginx)")
    unknown = set(args.bodies) - set(BODY_KINDS)
    if unknown:
        problems.append(f"unknown body kinds {sorted(unknown)}; choose from {', '.join(BODY_KINDS)}")
    if problems:
        sys.exit("error: " + "; ".join(problems))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, with ``bodies`` and ``concurrency`` split into lists, validated."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=int, default=60, help="length of each run")
    parser.add_argument("--concurrency", default="1,8,64", help="requests in flight, comma-separated")
    parser.add_argument("--bodies", default="json,npy", help="body kinds: json, npy (multipart)")
    parser.add_argument("--points", type=int, default=1024, help="points per cloud")
    parser.add_argument(
        "--path", default="/v1/pose", help="route and query, e.g. '/v1/pose?refine=false' (the network alone)"
    )
    parser.add_argument("--distinct-clouds", type=int, default=64, help="different posed clouds sent in turn")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers of each started server")
    parser.add_argument("--replicas", type=int, default=1, help="servers to start")
    parser.add_argument("--nginx", action="store_true", help="put a local nginx (deploy/nginx.conf) in front")
    parser.add_argument("--url", help="measure this running service instead of starting one")
    parser.add_argument("--api-key", help="key for POST /v1/admin/reload on --url")
    parser.add_argument("--reload-every-s", type=float, help="call POST /v1/admin/reload this often")
    parser.add_argument(
        "--kill-one-replica-at-s", type=float, help="SIGKILL one replica this far into each run"
    )
    parser.add_argument(
        "--model",
        type=Path,
        help="serve this exam-setting model (cloudpose export of a flat_fc run) instead of the store; "
        "the bodies are its template, posed (the exam's copies of one cloud)",
    )
    parser.add_argument("--timeout-s", type=float, default=30.0, help="wrk's per-request timeout")
    parser.add_argument("--json-out", type=Path, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    args.bodies = [kind.strip() for kind in args.bodies.split(",")]
    args.concurrency = [int(value) for value in args.concurrency.split(",")]
    validate(args)
    return args


def start_topology(
    args: argparse.Namespace, stack: ExitStack, folder: Path, env: dict[str, str]
) -> tuple[Topology, str, list[str]]:
    """The service under load: ``--url``, or servers (behind nginx) that ``stack`` stops.

    Returns:
        The topology, a description of it for the title, and notes from the servers' start.
    """
    if args.url:
        topology = Topology(args.url.rstrip("/"), [], None)
        serving.wait_ready(topology.url, None, None)
        return topology, f"the service at {topology.url}", []
    servers = stack.enter_context(
        serving.running_servers(
            folder,
            count=args.replicas,
            workers=args.workers,
            env=env,
            extra_args=["--model", str(args.model.resolve())] if args.model else (),
        )
    )
    notes = sorted({server.note for server in servers if server.note})
    nginx = None
    if args.nginx:
        nginx = stack.enter_context(serving.running_nginx([server.port for server in servers], folder))
    topology = Topology(nginx.url if nginx else servers[0].url, servers, nginx)
    described = f"{args.replicas} × cloudpose serve, {args.workers} worker(s) each"
    described += ", behind nginx (deploy/nginx.conf)" if nginx else ""
    described += f", serving the exam-setting model {args.model}" if args.model else ""
    return topology, described, notes


def closing_notes(args: argparse.Namespace, memory: dict[str, float]) -> list[str]:
    """The notes under the table that explain the setting and the columns."""
    sent = "posed copies of the model's template" if args.model else "fresh posed samples of the bunny"
    notes = [
        f"loopback on {os.cpu_count()} CPU cores, shared by wrk (one thread), the server(s) and nginx: "
        "server CPU and wrk CPU are shares of one core (200% = both)",
        "latency: wrk's closed loop (each connection sends its next request once the last is answered), "
        "over the answered requests; 'errors' counts non-200 answers and socket errors (timeouts included)",
        f"bodies: {args.distinct_clouds} {sent} per kind, sent in turn",
    ]
    if args.kill_one_replica_at_s is not None:
        notes.append("server CPU counts nginx and the replicas that were not killed")
    if args.reload_every_s and args.workers > 1:
        notes.append(
            f"with {args.workers} workers a reload call reloads the worker that takes it; "
            "SIGHUP to the server replaces every worker"
        )
    if memory:
        notes.append(
            "RSS after the runs: " + ", ".join(f"{port} {mib:.0f} MiB" for port, mib in memory.items())
        )
    return notes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    api_key = args.api_key or (secrets.token_hex(16) if args.reload_every_s and not args.url else None)
    env = {"CLOUDPOSE_API_KEYS": api_key} if api_key and not args.url else {}
    rows, results, notes = [], [], []
    with tempfile.TemporaryDirectory(prefix="cloudpose-load-") as tmp, ExitStack() as stack:
        folder = Path(tmp)
        if args.model is not None:
            args.points = len(np.load(args.model.with_name("template.npy"), mmap_mode="r"))
        bodies = {
            kind: build_bodies(kind, args.points, args.distinct_clouds, folder, args.model)
            for kind in args.bodies
        }
        topology, described, server_notes = start_topology(args, stack, folder, env)
        notes += server_notes
        clouds = "copies of its template" if args.model else "bunny clouds"
        print(f"cloudpose load: {described}; {args.points}-point posed {clouds}, {args.duration_s} s per run")
        for line in check_answers(topology.url, args.points, api_key, args.path, args.model):
            print(f"  {line}")
        for kind in args.bodies:
            for concurrency in args.concurrency:
                row, result = one_run(topology, kind, concurrency, bodies[kind], args, api_key, env, folder)
                rows.append(row)
                results.append(result)
                notes += [f"{kind} c={concurrency}: {event}" for event in result["events"]]
        memory = {f":{server.port}": serving.rss_mib(server.pid) for server in topology.servers}

    notes += closing_notes(args, memory)
    header = ["body", "concurrency", "requests", "req/s", "p50 ms", "p99 ms", "errors", "what failed"]
    serving.print_table(
        f"cloudpose load: POST {args.path}, {args.points} points, {args.duration_s} s per row",
        [*header, "server CPU", "wrk CPU"],
        rows,
        notes,
    )
    if args.json_out:
        args.json_out.write_text(
            json.dumps({"topology": described, "runs": results, "notes": notes}, indent=2)
        )
        print(f"\nwrote {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
