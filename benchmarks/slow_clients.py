"""Slow and idle clients: does cloudpose cut them off, and does ``/health`` still answer?

Starts ``cloudpose serve`` on a free port (or measures ``--url``, e.g. nginx in front of it), then:

a. sends a request whose body (a real JSON cloud) arrives one byte every ``--interval-s``
   seconds, and times how long until the server cuts it off (an answer such as 408, or a
   closed connection);
b. the same with request headers arriving one line every ``--interval-s`` seconds (a and b run
   side by side; each gives up after ``--give-up-s``);
c. opens ``--idle-connections`` TCP connections that send nothing, from ``--idle-processes``
   processes (each raises its open-files limit to the hard limit), holds them ``--hold-s``
   seconds and closes them, while a prober calls ``GET /health`` on a new connection every
   ``--probe-interval-s``. It reports how many connections got through and stayed open, the
   server's open files and memory, ``/health``'s latency while connections were being opened,
   while held and after closing, and the lines with "Traceback" in the server's log.

Usage::

    .venv/bin/python benchmarks/slow_clients.py [--interval-s 5] [--give-up-s 120]
        [--idle-connections 20000] [--idle-processes 3] [--hold-s 20] [--url URL]
"""

from __future__ import annotations

import argparse
import errno
import json
import multiprocessing
import select
import selectors
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import serving


@dataclass
class Cutoff:
    """How a slow request ended: ``outcome`` after ``after_s`` seconds, ``sent`` bytes in."""

    outcome: str
    after_s: float
    sent: int


def slow_request(
    address: tuple[str, int], head: bytes, drip: Iterator[bytes], interval_s: float, give_up_s: float
) -> Cutoff:
    """Send ``head``, then one piece of ``drip`` every ``interval_s`` seconds, until the server
    answers or closes the connection, or ``give_up_s`` passes."""
    sock = socket.create_connection(address, timeout=10)
    started = time.monotonic()
    sent = 0
    try:
        sock.sendall(head)
        sent += len(head)
        while (elapsed := time.monotonic() - started) < give_up_s:
            readable, _, _ = select.select([sock], [], [], min(interval_s, give_up_s - elapsed))
            if readable:
                return Cutoff(read_ending(sock), time.monotonic() - started, sent)
            try:
                piece = next(drip)
                sock.sendall(piece)
                sent += len(piece)
            except (BrokenPipeError, ConnectionResetError):
                return Cutoff("closed (seen while sending)", time.monotonic() - started, sent)
        return Cutoff(f"still open after {give_up_s:g} s", time.monotonic() - started, sent)
    finally:
        sock.close()


def read_ending(sock: socket.socket) -> str:
    """What a readable socket holds: a response's status (and whether the connection closed
    after it), a plain close or a reset."""
    try:
        data = sock.recv(65536)
    except ConnectionResetError:
        return "reset"
    if not data:
        return "closed, no answer"
    status = data.split(b"\r\n", 1)[0].decode(errors="replace")
    sock.settimeout(2.0)
    try:
        while sock.recv(65536):
            pass
        return f"answered {status!r}, then closed"
    except (TimeoutError, ConnectionResetError):
        return f"answered {status!r}"


def slow_body(address: tuple[str, int], args: argparse.Namespace) -> Cutoff:
    body = serving.json_body(serving.posed_bunny(1024, seed=0).observed)
    head = (
        f"POST /v1/pose HTTP/1.1\r\nHost: {address[0]}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in serving.auth_headers(args.api_key).items())
        + "\r\n"
    ).encode()
    return slow_request(
        address, head, (body[i : i + 1] for i in range(len(body))), args.interval_s, args.give_up_s
    )


def slow_headers(address: tuple[str, int], args: argparse.Namespace) -> Cutoff:
    head = f"GET /health HTTP/1.1\r\nHost: {address[0]}\r\n".encode()
    lines = (f"X-Slow-{index}: {index}\r\n".encode() for index in range(1_000_000))
    return slow_request(address, head, lines, args.interval_s, args.give_up_s)


def hold_connections(address: tuple[str, int], count: int, connect_timeout_s: float, pipe) -> None:
    """In a process of its own: open ``count`` idle connections, report, hold them until told,
    report how many are still open, close them."""
    serving.raise_open_files_limit()
    selector = selectors.DefaultSelector()
    established: list[socket.socket] = []
    failures: Counter[str] = Counter()
    for _ in range(count):
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as error:
            failures[errno.errorcode.get(error.errno, str(error.errno))] += 1
            continue
        sock.setblocking(False)
        code = sock.connect_ex(address)
        if code == 0:
            established.append(sock)
        elif code == errno.EINPROGRESS:
            selector.register(sock, selectors.EVENT_WRITE)
        else:
            failures[errno.errorcode.get(code, str(code))] += 1
            sock.close()
    deadline = time.monotonic() + connect_timeout_s
    while selector.get_map() and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1.0):
            sock = key.fileobj
            selector.unregister(sock)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code == 0:
                established.append(sock)
            else:
                failures[errno.errorcode.get(code, str(code))] += 1
                sock.close()
    for key in list(selector.get_map().values()):
        failures["no handshake in time"] += 1
        selector.unregister(key.fileobj)
        key.fileobj.close()
    pipe.send({"established": len(established), "failures": dict(failures)})
    while True:  # hold them, counting the open ones when asked, until told to close
        order = pipe.recv()
        pipe.send(sum(is_open(sock) for sock in established))
        if order == "close":
            break
    for sock in established:
        sock.close()


def is_open(sock: socket.socket) -> bool:
    """Whether the server has neither closed nor reset this idle connection."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def health_on_new_connection(address: tuple[str, int], timeout_s: float) -> int | str:
    """``GET /health`` on a connection of its own (as a health checker sends it); the status, or
    what went wrong."""
    try:
        with socket.create_connection(address, timeout=timeout_s) as sock:
            sock.sendall(f"GET /health HTTP/1.1\r\nHost: {address[0]}\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while b"\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    return "closed"
                answer += chunk
            return int(answer.split(b" ", 2)[1])
    except TimeoutError:
        return "timeout"
    except OSError as error:
        return errno.errorcode.get(error.errno, type(error).__name__) if error.errno else type(error).__name__


def count_open(pipes: list, order: str) -> int:
    """Send ``order`` ("count" or "close") to every holding process; their open connections."""
    for pipe in pipes:
        pipe.send(order)
    return sum(pipe.recv() for pipe in pipes)


@dataclass
class Prober:
    """``GET /health`` on a new connection every ``interval_s``, each probe tagged with a stage."""

    address: tuple[str, int]
    interval_s: float
    stage: str = "before"
    probes: list[tuple[str, int | str, float]] = field(default_factory=list)
    running: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while self.running.is_set():
            started = time.perf_counter()
            stage = self.stage
            status = health_on_new_connection(self.address, timeout_s=5.0)
            elapsed = time.perf_counter() - started
            self.probes.append((stage, status, elapsed))
            time.sleep(max(0.0, self.interval_s - elapsed))

    def row(self, stage: str) -> list[object]:
        chosen = [(status, elapsed) for tagged, status, elapsed in self.probes if tagged == stage]
        timing = serving.percentiles_ms([elapsed for status, elapsed in chosen if status == 200])
        return [
            f"GET /health, {stage}",
            serving.status_counts([status for status, _ in chosen]),
            f"p50 {serving.fmt_ms(timing['p50_ms'])} / p99 {serving.fmt_ms(timing['p99_ms'])} / "
            f"max {serving.fmt_ms(timing['max_ms'])} ms",
        ]


def idle_connections(
    address: tuple[str, int], server: serving.Server | None, args: argparse.Namespace
) -> list[list[object]]:
    """Part c: the rows of its table."""
    prober = Prober(address, args.probe_interval_s)
    prober.running.set()
    probe_thread = threading.Thread(target=prober.run)
    probe_thread.start()
    peak_files, rss = [0], {"before": serving.rss_mib(server.pid) if server else float("nan")}
    sampling = threading.Event()

    def sample() -> None:
        while sampling.is_set():
            peak_files[0] = max(peak_files[0], serving.open_files(server.pid))
            time.sleep(1.0)

    if server:
        sampling.set()
        sampler = threading.Thread(target=sample)
        sampler.start()
    time.sleep(2.0)
    prober.stage = "while opening"
    opened_at = time.monotonic()
    pipes, processes = start_holders(address, args)
    reports = [pipe.recv() for pipe in pipes]
    opening_s = time.monotonic() - opened_at
    prober.stage = "while held"
    time.sleep(args.hold_s / 2)
    rss["held"] = serving.rss_mib(server.pid) if server else float("nan")
    still_open = {"halfway": count_open(pipes, "count")}
    time.sleep(args.hold_s / 2)
    still_open["end"] = count_open(pipes, "close")
    for process in processes:
        process.join(timeout=30)
    prober.stage = "after closing"
    time.sleep(max(3.0, 20 * args.probe_interval_s))
    prober.running.clear()
    probe_thread.join()
    if server:
        sampling.clear()
        sampler.join()
    rss["after"] = serving.rss_mib(server.pid) if server else float("nan")
    rows = idle_rows(args, server, reports, opening_s, still_open, peak_files[0], rss)
    return rows + [prober.row(stage) for stage in ("before", "while opening", "while held", "after closing")]


def start_holders(address: tuple[str, int], args: argparse.Namespace) -> tuple[list, list]:
    """``--idle-processes`` forked processes that open ``--idle-connections`` between them.

    Returns:
        The pipes to them (each first sends its report of the handshakes) and the processes.
    """
    context = multiprocessing.get_context("fork")
    shares = [args.idle_connections // args.idle_processes] * args.idle_processes
    shares[0] += args.idle_connections - sum(shares)
    pipes, processes = [], []
    for share in shares:
        parent, child = context.Pipe()
        process = context.Process(
            target=hold_connections, args=(address, share, args.connect_timeout_s, child)
        )
        process.start()
        pipes.append(parent)
        processes.append(process)
    return pipes, processes


def idle_rows(
    args: argparse.Namespace,
    server: serving.Server | None,
    reports: list[dict],
    opening_s: float,
    still_open: dict[str, int],
    peak_files: int,
    rss: dict[str, float],
) -> list[list[object]]:
    """Part c's rows about the connections and the server (the probes' rows come after)."""
    established = sum(report["established"] for report in reports)
    failures: Counter[str] = Counter()
    for report in reports:
        failures.update(report["failures"])
    rows = [
        [
            f"idle connections asked for ({args.idle_processes} processes)",
            f"{args.idle_connections}: {established} handshakes completed"
            + (f", failed: {serving.status_counts(list(failures.elements()))}" if failures else ""),
            f"opened in {opening_s:.1f} s",
        ],
        [
            "still open halfway through the hold",
            f"{still_open['halfway']} of {established}",
            f"at {args.hold_s / 2:g} s",
        ],
        [
            "still open at the end of the hold",
            f"{still_open['end']} of {established}",
            f"at {args.hold_s:g} s",
        ],
    ]
    if server:
        limit = serving.open_files_limit(server.pid)
        rows.append(["server's open files, highest seen", f"{peak_files} (its limit {limit})", "-"])
        rows.append(
            [
                "server RSS, MiB",
                f"before {rss['before']:.0f}, held {rss['held']:.0f}, after {rss['after']:.0f}",
                "-",
            ]
        )
    return rows


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, set[str]]:
    """The options and the parts to skip."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval-s", type=float, default=5.0, help="time between slow bytes or lines")
    parser.add_argument("--give-up-s", type=float, default=120.0, help="stop a slow request after this")
    parser.add_argument("--idle-connections", type=int, default=20_000, help="idle TCP connections to open")
    parser.add_argument("--idle-processes", type=int, default=3, help="processes sharing them")
    parser.add_argument("--connect-timeout-s", type=float, default=60.0, help="wait this long for handshakes")
    parser.add_argument("--hold-s", type=float, default=20.0, help="keep the idle connections this long")
    parser.add_argument("--probe-interval-s", type=float, default=0.2, help="time between /health probes")
    parser.add_argument("--skip", default="", help="parts to leave out, comma-separated: slow, idle")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers of the started server")
    parser.add_argument("--url", help="measure this running service instead of starting one")
    parser.add_argument("--api-key", help="API key for the pose route, when the service needs one")
    parser.add_argument("--json-out", type=Path, help="also write the tables here as JSON")
    args = parser.parse_args(argv)
    skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    if skip - {"slow", "idle"} or args.idle_processes < 1:
        sys.exit("error: --skip takes slow and idle; --idle-processes must be 1 or more")
    return args, skip


def slow_requests(address: tuple[str, int], args: argparse.Namespace) -> list[list[object]]:
    """Parts a and b side by side: the rows of their table."""
    results: dict[str, Cutoff] = {}
    threads = [
        threading.Thread(target=lambda: results.__setitem__("body", slow_body(address, args))),
        threading.Thread(target=lambda: results.__setitem__("headers", slow_headers(address, args))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [
        [
            f"{name}: one {piece} every {args.interval_s:g} s",
            cutoff.outcome,
            f"{cutoff.after_s:.1f} s",
        ]
        for name, piece, cutoff in (
            ("a. body", "byte", results["body"]),
            ("b. headers", "line", results["headers"]),
        )
    ]


def print_tables(tables: dict, args: argparse.Namespace) -> None:
    if "slow" in tables:
        serving.print_table(
            "cloudpose slow clients: how long until the server cuts a slow request off",
            ["request", "how it ended", "after"],
            tables["slow"],
            ["cut off by an answer (e.g. 408) or by closing the connection; 'still open' means never"],
        )
    if "idle" in tables:
        serving.print_table(
            f"cloudpose idle connections: {args.idle_connections} opened, held, closed",
            ["check", "result", "time"],
            tables["idle"],
            [
                "each /health probe opens a new connection (plain socket, 5 s timeout) like a health checker",
                "the idle clients and the prober share the CPU cores with the server",
            ],
        )


def main(argv: list[str] | None = None) -> int:
    args, skip = parse_args(argv)
    tables = {}
    with tempfile.TemporaryDirectory(prefix="cloudpose-slow-") as tmp, ExitStack() as stack:
        server = None
        if args.url:
            url = args.url.rstrip("/")
            serving.wait_ready(url, None, None)
        else:
            # The server may hold as many connections as its hard limit allows.
            serving.raise_open_files_limit()
            (server,) = stack.enter_context(serving.running_servers(Path(tmp), workers=args.workers))
            url = server.url
        parts = urlsplit(url)
        address = (parts.hostname, parts.port or 80)
        print(f"cloudpose slow clients: {url}", flush=True)

        if "slow" not in skip:
            print(f"  a, b: a slow body and slow headers, one piece every {args.interval_s:g} s", flush=True)
            tables["slow"] = slow_requests(address, args)
        if "idle" not in skip:
            print(f"  c: {args.idle_connections} idle connections, held {args.hold_s:g} s", flush=True)
            tables["idle"] = idle_connections(address, server, args)
        tracebacks = serving.count_tracebacks(server.log_path) if server else None

    print_tables(tables, args)
    if tracebacks is not None:
        print(f"\nserver log: {tracebacks} line(s) with 'Traceback'")
        tables["tracebacks"] = tracebacks
    if args.json_out:
        args.json_out.write_text(json.dumps(tables, indent=2, default=str))
        print(f"\nwrote {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
