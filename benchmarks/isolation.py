"""Isolation: do hard clouds starve cloudpose's health checks and easy requests?

Starts ``cloudpose serve`` on a free port (or measures ``--url``). First, with nothing else
running, a prober calls ``GET /health`` every ``--health-interval-s`` and another posts easy clouds
(fresh posed samples of the bunny, in its units) one after another, for ``--idle-s`` seconds. Then
``--clients`` clients keep hard requests in flight for ``--duration-s`` seconds while the probers
go on. The hard requests, in turn:

* ``sphere``: 1024 points on a sphere as large as the bunny: no pose fits, so the search runs
  until its budget ends;
* ``metres``: a posed bunny in metres (0.0159 × its units) sent without ``units``, so the
  service has to find the scale;
* ``batch``: 64 hard clouds (spheres and metre bunnies) in one ``/v1/pose/batch`` request.

The probers run in a process of their own (``--probers thread`` puts them beside the hard
clients, as earlier versions did), so the hard clients' work on their answers does not delay them.

The table gives each kind's statuses and latency, idle and loaded, and how many requests ended
after their deadline: the longest a request may take when the service keeps its limits (the
queue timeout plus the compute budget of a pose or a batch, plus ``--slack-s``), read from the
service's settings (the environment, as a started server reads it) unless given.

Usage::

    .venv/bin/python benchmarks/isolation.py [--duration-s 60] [--idle-s 10] [--clients 4]
        [--probers process|thread] [--workers 1] [--url http://127.0.0.1:8000] [--api-key KEY]
        [--json-out isolation.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import serving

HARD_KINDS = ("sphere", "metres", "batch")


@dataclass
class Outcome:
    kind: str
    phase: str
    status: int | str
    latency_s: float
    found: tuple[int, int] | None  # poses found, poses answered


@dataclass
class Deadlines:
    """The longest each kind of request may take, seconds."""

    health_s: float
    pose_s: float
    batch_s: float

    def of(self, kind: str) -> float:
        return {"health": self.health_s, "batch": self.batch_s}.get(kind, self.pose_s)


def service_deadlines(args: argparse.Namespace) -> tuple[Deadlines, str]:
    """Deadlines from the options, else from the service's settings; and where they came from."""
    sys.path.insert(0, str(serving.REPO_ROOT))
    from cloudpose.settings import Settings

    settings = Settings()
    queue_s = getattr(settings, "queue_timeout_s", None)
    pose_s = getattr(settings, "pose_budget_ms", None)
    batch_s = getattr(settings, "batch_budget_s", None)
    source = "the service's settings: queue timeout + compute budget + slack"
    if None in (queue_s, pose_s, batch_s):
        queue_s, pose_s, batch_s = 10.0, 1000.0, 20.0
        source = "assumed limits (this service has no budgets yet): 10 s queue, 1 s a pose, 20 s a batch"
    deadlines = Deadlines(
        health_s=args.health_deadline_s,
        pose_s=args.pose_deadline_s or queue_s + pose_s / 1000 + args.slack_s,
        batch_s=args.batch_deadline_s or queue_s + batch_s + args.slack_s,
    )
    return deadlines, source


class Bodies:
    """Pre-built request bodies of each kind, handed out in turn."""

    def __init__(self, points: int, batch_size: int, count: int) -> None:
        metres = serving.bunny_metres_per_unit()
        radius = serving.bunny_diameter() / 2
        hard = [
            serving.sphere(points, radius, seed)
            if seed % 2 == 0
            else serving.posed_bunny(points, seed).observed * metres
            for seed in range(batch_size)
        ]
        self.bodies = {
            "easy": [
                serving.json_body(serving.posed_bunny(points, 100 + seed).observed) for seed in range(count)
            ],
            "sphere": [
                serving.json_body(serving.sphere(points, radius, 200 + seed)) for seed in range(count)
            ],
            "metres": [
                serving.json_body(serving.posed_bunny(points, 300 + seed).observed * metres)
                for seed in range(count)
            ],
            "batch": [serving.json_batch_body(hard)],
        }
        self.turn = {kind: 0 for kind in self.bodies}
        self.lock = threading.Lock()

    def next(self, kind: str) -> bytes:
        with self.lock:
            self.turn[kind] += 1
            bodies = self.bodies[kind]
            return bodies[self.turn[kind] % len(bodies)]


class Run:
    """The probers and hard clients, and what they saw."""

    def __init__(self, url: str, bodies: Bodies, deadlines: Deadlines, api_key: str | None) -> None:
        self.url, self.bodies, self.deadlines = url, bodies, deadlines
        self.headers = {"content-type": "application/json", **serving.auth_headers(api_key)}
        self.phase = "idle"
        self.outcomes: list[Outcome] = []
        self.lock = threading.Lock()
        self.probing = threading.Event()
        self.loading = threading.Event()

    def request(self, client, kind: str) -> None:
        import httpx

        started = time.perf_counter()
        phase, found = self.phase, None
        try:
            if kind == "health":
                response = client.get("/health")
            else:
                path = "/v1/pose/batch" if kind == "batch" else "/v1/pose"
                response = client.post(path, content=self.bodies.next(kind), headers=self.headers)
            status: int | str = response.status_code
            if status == 200 and kind != "health":
                answer = response.json()
                poses = answer.get("poses", [answer])
                found = (sum(bool(pose.get("found")) for pose in poses), len(poses))
        except httpx.HTTPError as error:
            status = type(error).__name__
        with self.lock:
            self.outcomes.append(Outcome(kind, phase, status, time.perf_counter() - started, found))

    def client(self, kind: str) -> object:
        import httpx

        # A client timeout well past the deadline, so late answers are seen rather than cut.
        return httpx.Client(base_url=self.url, timeout=2 * self.deadlines.of(kind) + 5)

    def probe(self, kind: str, interval_s: float) -> None:
        with self.client(kind) as client:
            while self.probing.is_set():
                started = time.perf_counter()
                self.request(client, kind)
                time.sleep(max(0.0, interval_s - (time.perf_counter() - started)))

    def hard_client(self, index: int) -> None:
        with self.client("batch") as client:
            turn = index
            while self.loading.is_set():
                self.request(client, HARD_KINDS[turn % len(HARD_KINDS)])
                turn += 1


def _probe_in_process(
    url: str,
    headers: dict[str, str],
    easy_bodies: list[bytes],
    intervals_s: dict[str, float],
    timeouts_s: dict[str, float],
    stop,
    results,
) -> None:
    """The probers in a process of their own (``--probers process``): the hard clients' threads
    (which read 64-pose answers) share no interpreter lock with them, so what they time is the
    server's. Puts ``(kind, wall-clock start, status, latency_s, found)`` tuples on ``results``."""
    import httpx

    outcomes, lock = [], threading.Lock()

    def probe(kind: str) -> None:
        with httpx.Client(base_url=url, timeout=timeouts_s[kind]) as client:
            turn = 0
            while not stop.is_set():
                started_wall, started, found = time.time(), time.perf_counter(), None
                try:
                    if kind == "health":
                        response = client.get("/health")
                    else:
                        body = easy_bodies[turn % len(easy_bodies)]
                        response = client.post("/v1/pose", content=body, headers=headers)
                    status: int | str = response.status_code
                    if status == 200 and kind != "health":
                        found = (int(bool(response.json().get("found"))), 1)
                except httpx.HTTPError as error:
                    status = type(error).__name__
                latency_s = time.perf_counter() - started
                with lock:
                    outcomes.append((kind, started_wall, status, latency_s, found))
                turn += 1
                time.sleep(max(0.0, intervals_s[kind] - latency_s))

    threads = [threading.Thread(target=probe, args=(kind,)) for kind in intervals_s]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put(outcomes)


def measure(url: str, args: argparse.Namespace, deadlines: Deadlines) -> list[Outcome]:
    bodies = Bodies(args.points, args.batch_size, count=16)
    run = Run(url, bodies, deadlines, args.api_key)
    run.probing.set()
    intervals = {"health": args.health_interval_s, "easy": args.easy_interval_s}
    if args.probers == "process":
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        stop, results = context.Event(), context.Queue()
        timeouts = {kind: 2 * deadlines.of(kind) + 5 for kind in intervals}
        prober = context.Process(
            target=_probe_in_process,
            args=(url, run.headers, bodies.bodies["easy"], intervals, timeouts, stop, results),
        )
        prober.start()
        probers = []
    else:
        probers = [threading.Thread(target=run.probe, args=item) for item in intervals.items()]
    for thread in probers:
        thread.start()
    print(f"  idle: probing for {args.idle_s:g} s (probers: {args.probers})", flush=True)
    time.sleep(args.idle_s)
    run.phase = "loaded"
    loaded_from = time.time()
    run.loading.set()
    clients = [threading.Thread(target=run.hard_client, args=(index,)) for index in range(args.clients)]
    for thread in clients:
        thread.start()
    print(f"  loaded: {args.clients} hard clients for {args.duration_s:g} s", flush=True)
    time.sleep(args.duration_s)
    run.loading.clear()
    run.probing.clear()
    if args.probers == "process":
        stop.set()
        for kind, started_wall, status, latency_s, found in results.get(timeout=120):
            phase = "loaded" if started_wall >= loaded_from else "idle"
            run.outcomes.append(Outcome(kind, phase, status, latency_s, found))
        prober.join(timeout=30)
    for thread in probers + clients:  # a hard client finishes the request it has in flight
        thread.join()
    return run.outcomes


def table(outcomes: list[Outcome], deadlines: Deadlines) -> tuple[list[list[object]], dict[str, dict]]:
    rows, summary = [], {}
    for kind in ("health", "easy", *HARD_KINDS):
        for phase in ("idle", "loaded"):
            chosen = [outcome for outcome in outcomes if outcome.kind == kind and outcome.phase == phase]
            if not chosen:
                continue
            answered = [outcome.latency_s for outcome in chosen if isinstance(outcome.status, int)]
            timing = serving.percentiles_ms(answered)
            late = sum(outcome.latency_s > deadlines.of(kind) for outcome in chosen)
            found = [outcome.found for outcome in chosen if outcome.found is not None]
            summary[f"{kind} {phase}"] = {**timing, "count": len(chosen), "late": late}
            rows.append(
                [
                    "GET /health" if kind == "health" else kind,
                    phase,
                    len(chosen),
                    serving.status_counts([outcome.status for outcome in chosen]),
                    f"{sum(hit for hit, _ in found)}/{sum(total for _, total in found)}" if found else "-",
                    serving.fmt_ms(timing["p50_ms"]),
                    serving.fmt_ms(timing["p99_ms"]),
                    serving.fmt_ms(timing["max_ms"]),
                    f"{deadlines.of(kind):g}",
                    late,
                ]
            )
    return rows, summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=60.0, help="how long the hard clients run")
    parser.add_argument(
        "--idle-s", type=float, default=10.0, help="probing alone first, for the idle figures"
    )
    parser.add_argument("--clients", type=int, default=4, help="hard clients, each one request in flight")
    parser.add_argument("--points", type=int, default=1024, help="points per cloud")
    parser.add_argument("--batch-size", type=int, default=64, help="hard clouds in a batch request")
    parser.add_argument("--health-interval-s", type=float, default=0.05, help="time between health probes")
    parser.add_argument("--easy-interval-s", type=float, default=0.1, help="time between easy requests")
    parser.add_argument(
        "--probers",
        choices=("process", "thread"),
        default="process",
        help="run the /health and easy probers in a process of their own, or as threads beside "
        "the hard clients (which then share this script's interpreter lock with them)",
    )
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers of the started server")
    parser.add_argument("--url", help="measure this running service instead of starting one")
    parser.add_argument("--api-key", help="API key for the pose routes, when the service needs one")
    parser.add_argument("--health-deadline-s", type=float, default=1.0, help="deadline of GET /health")
    parser.add_argument("--pose-deadline-s", type=float, help="deadline of one pose (default: from settings)")
    parser.add_argument("--batch-deadline-s", type=float, help="deadline of a batch (default: from settings)")
    parser.add_argument("--slack-s", type=float, default=2.0, help="added to the settings' limits")
    parser.add_argument("--json-out", type=Path, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.batch_size < 2:
        sys.exit("error: --clients must be 1 or more and --batch-size 2 or more")
    return args


def summary_notes(
    summary: dict[str, dict[str, float]], late: int, source: str, args: argparse.Namespace
) -> list[str]:
    """The notes under the table: probes idle against loaded, lateness, and how it was measured."""
    health_idle, health_loaded = summary.get("health idle", {}), summary.get("health loaded", {})
    easy_idle, easy_loaded = summary.get("easy idle", {}), summary.get("easy loaded", {})
    ratio = easy_loaded.get("p50_ms", float("nan")) / easy_idle.get("p50_ms", float("nan"))
    return [
        f"/health p99: idle {serving.fmt_ms(health_idle.get('p99_ms', float('nan')))} ms, "
        f"loaded {serving.fmt_ms(health_loaded.get('p99_ms', float('nan')))} ms",
        f"easy p50: idle {serving.fmt_ms(easy_idle.get('p50_ms', float('nan')))} ms, "
        f"loaded {serving.fmt_ms(easy_loaded.get('p50_ms', float('nan')))} ms ({ratio:.1f}× idle)",
        "every request ended within its deadline"
        if late == 0
        else f"{late} request(s) ended after their deadline",
        f"deadlines from {source}",
        "found: poses marked found of those answered (each of a batch counts); a sphere is never the bunny",
        "hard clients are threads of this script, on the same CPU cores as the server; the probers "
        + ("run in a process of their own" if args.probers == "process" else "are threads beside them"),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    deadlines, source = service_deadlines(args)
    notes = []
    with tempfile.TemporaryDirectory(prefix="cloudpose-isolation-") as tmp, ExitStack() as stack:
        if args.url:
            url = args.url.rstrip("/")
            serving.wait_ready(url, None, None)
            log_path = None
        else:
            (server,) = stack.enter_context(serving.running_servers(Path(tmp), workers=args.workers))
            url, log_path = server.url, server.log_path
            notes += [server.note] if server.note else []
        print(f"cloudpose isolation: {url}" + ("" if args.url else f", {args.workers} worker(s)"))
        outcomes = measure(url, args, deadlines)
        tracebacks = serving.count_tracebacks(log_path) if log_path else None

    rows, summary = table(outcomes, deadlines)
    late = sum(row[-1] for row in rows)
    notes += summary_notes(summary, late, source, args)
    if tracebacks is not None:
        notes.append(f"server log: {tracebacks} line(s) with 'Traceback'")
    serving.print_table(
        f"cloudpose isolation: {args.clients} hard clients, {args.points}-point clouds, "
        f"batches of {args.batch_size}; {args.idle_s:g} s idle, {args.duration_s:g} s loaded",
        [
            "request",
            "phase",
            "count",
            "statuses",
            "found",
            "p50 ms",
            "p99 ms",
            "max ms",
            "deadline s",
            "late",
        ],
        rows,
        notes,
    )
    if args.json_out:
        args.json_out.write_text(json.dumps({"url": url, "summary": summary, "notes": notes}, indent=2))
        print(f"\nwrote {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
