"""Fuzz the API with Schemathesis against its own OpenAPI document; print a table of statuses.

    python benchmarks/fuzz_api.py [--examples 300] [--seed 0] [--url URL --api-key KEY]

Starts ``cloudpose serve`` on a free port (with --api-key, the key checks and the admin route
are exercised too), runs ``st run`` with every check except "a schema-valid request must
be accepted" (a multipart file is schema-valid whatever its name and bytes, and a .png is
rightly refused), and reads every request and answer back from Schemathesis's HAR report.
It fails (exit 1) on any 5xx, on any check Schemathesis reports, or when a POST route never
reached 200. ``tests/service/test_schema_fuzz.py`` runs it with a small count in CI.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import running_servers  # noqa: E402

# The routes of the document, as patterns over request paths.
ROUTE_PATTERNS = [
    ("/v1/objects/{name}/pose/batch", re.compile(r"^/v1/objects/[^/]+/pose/batch$")),
    ("/v1/objects/{name}/pose", re.compile(r"^/v1/objects/[^/]+/pose$")),
    ("/v1/objects/{name}", re.compile(r"^/v1/objects/[^/]+$")),
]
EXCLUDED_CHECKS = "positive_data_acceptance"
ADMIN_ROUTE = "/v1/admin/reload"


@dataclass
class FuzzResult:
    """What one run sent and got back.

    Attributes:
        statuses: (method, route) -> Counter of status codes.
        returncode: Schemathesis's exit status (0: no check failed).
        output: its console output.
    """

    statuses: dict[tuple[str, str], Counter] = field(default_factory=dict)
    returncode: int = 0
    output: str = ""
    post_routes: list[str] = field(default_factory=list)
    keys: bool = False

    @property
    def requests(self) -> int:
        return sum(sum(counter.values()) for counter in self.statuses.values())

    @property
    def server_errors(self) -> int:
        return sum(n for counter in self.statuses.values() for status, n in counter.items() if status >= 500)

    def post_routes_without_200(self) -> list[str]:
        """The document's POST routes that never answered 200 (the admin route answers 403
        by design when no keys are configured)."""
        return [
            route
            for route in self.post_routes
            if not self.statuses.get(("POST", route), Counter())[200]
            and not (route == ADMIN_ROUTE and not self.keys)
        ]


def route_of(path: str) -> str:
    for route, pattern in ROUTE_PATTERNS:
        if pattern.match(path):
            return route
    return path


def statuses_from_har(har_path: Path) -> dict[tuple[str, str], Counter]:
    entries = json.loads(har_path.read_text())["log"]["entries"]
    statuses: dict[tuple[str, str], Counter] = {}
    for entry in entries:
        method = entry["request"]["method"]
        route = route_of(urlsplit(entry["request"]["url"]).path)
        statuses.setdefault((method, route), Counter())[int(entry["response"]["status"])] += 1
    return statuses


def fuzz(url: str, examples: int, seed: int, api_key: str | None, folder: Path) -> FuzzResult:
    """Run Schemathesis against ``url``'s document and collect every status it got."""
    har_path = folder / "fuzz.har"
    command = [
        str(Path(sys.executable).parent / "st"),
        "run",
        f"{url}/openapi.json",
        "--max-examples",
        str(examples),
        "--seed",
        str(seed),
        "--checks",
        "all",
        "--exclude-checks",
        EXCLUDED_CHECKS,
        "--suppress-health-check",
        "all",
        "--no-color",
        "--request-timeout",
        "30",
        "--report",
        "har",
        "--report-har-path",
        str(har_path),
        "--generation-database",
        "none",
    ]
    if api_key:
        command += ["--header", f"X-API-Key: {api_key}"]
    completed = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    result = FuzzResult(
        returncode=completed.returncode, output=completed.stdout + completed.stderr, keys=bool(api_key)
    )
    headers = {"X-API-Key": api_key} if api_key else {}
    document = httpx.get(f"{url}/openapi.json", headers=headers, timeout=30).json()
    result.post_routes = [path for path, operations in document["paths"].items() if "post" in operations]
    if har_path.exists():
        result.statuses = statuses_from_har(har_path)
    return result


def format_table(result: FuzzResult) -> str:
    lines = [f"{'route':<42} {'requests':>8}  statuses", "-" * 90]
    for (method, route), counter in sorted(
        result.statuses.items(), key=lambda item: (item[0][1], item[0][0])
    ):
        spread = ", ".join(f"{status}: {n}" for status, n in sorted(counter.items()))
        lines.append(f"{method + ' ' + route:<42} {sum(counter.values()):>8}  {spread}")
    lines.append("-" * 90)
    lines.append(
        f"{'all':<42} {result.requests:>8}  5xx: {result.server_errors}; "
        f"Schemathesis exit status {result.returncode}"
    )
    return "\n".join(lines)


def run(
    examples: int,
    seed: int,
    url: str | None = None,
    api_key: str | None = None,
    store: Path | None = None,
) -> tuple[FuzzResult, int]:
    """Fuzz ``url``, or a server started here (with ``api_key`` configured, if given, serving
    ``store``, by default the shipped objects); returns the result and the count of tracebacks
    in the started server's log (0 for ``url``)."""
    with tempfile.TemporaryDirectory(prefix="cloudpose-fuzz-") as tmp:
        folder = Path(tmp)
        if url:
            return fuzz(url, examples, seed, api_key, folder), 0
        env = {"CLOUDPOSE_API_KEYS": api_key} if api_key else {}
        extra_args = ["--store", str(store)] if store is not None else []
        with running_servers(folder, env=env, extra_args=extra_args) as (server,):
            result = fuzz(server.url, examples, seed, api_key, folder)
        return result, server.log_path.read_text(errors="replace").count("Traceback")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=300, help="Generated cases per operation at most.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--url", help="Fuzz this running service instead of starting one.")
    parser.add_argument(
        "--api-key",
        help="Send this key (and start the server with it): the key checks and the admin route are "
        "fuzzed too, but most cases then test authentication",
    )
    args = parser.parse_args()
    result, tracebacks = run(args.examples, args.seed, args.url, args.api_key)
    print(format_table(result))
    print(f"server log: {tracebacks} tracebacks")
    if result.returncode != 0:
        print(result.output[-6000:], file=sys.stderr)
    if result.post_routes_without_200():
        print(f"POST routes that never answered 200: {result.post_routes_without_200()}", file=sys.stderr)
    failed = result.returncode != 0 or result.server_errors or result.post_routes_without_200() or tracebacks
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
