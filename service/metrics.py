"""Prometheus metrics at ``/metrics``, through prometheus-fastapi-instrumentator.

The instrumentator counts requests by route and status and keeps the latency histogram; this
module adds what only cloudpose knows: pose time per object, hypotheses tried, answers found or
not, the pose queue's depth and the served model ids. Each app gets its own registry (tests build
several apps in one process); with several worker processes, set ``PROMETHEUS_MULTIPROC_DIR``
(``cloudpose serve --workers`` does) and every scrape sums all of them.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_fastapi_instrumentator import Instrumentator

POSE_SECONDS_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 20.0)
HYPOTHESES_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServiceMetrics:
    """The service's own metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
        self.pose_seconds = Histogram(
            "cloudpose_pose_seconds",
            "Parsing, network and search time of one pose request, per object.",
            ["object"],
            buckets=POSE_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.hypotheses = Histogram(
            "cloudpose_hypotheses",
            "Starting poses screened or refined for one cloud.",
            ["object"],
            buckets=HYPOTHESES_BUCKETS,
            registry=self.registry,
        )
        self.answers = Counter(
            "cloudpose_answers",
            "Pose answers by object and verdict.",
            ["object", "found"],
            registry=self.registry,
        )
        self.hard_clouds = Counter(
            "cloudpose_hard_clouds",
            "Clouds that turned out hard, by where they were finished (a hard-cloud process, or at "
            "once when those were busy).",
            ["object", "where"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "cloudpose_queue_depth",
            "Pose requests computing or waiting for a worker.",
            registry=self.registry,
            **({"multiprocess_mode": "livesum"} if multiprocess else {}),
        )
        self.model = Gauge(
            "cloudpose_model",
            "Served objects and their model ids (value 1).",
            ["object", "model_id"],
            registry=self.registry,
            **({"multiprocess_mode": "max"} if multiprocess else {}),
        )

    def observe(self, served: Any, results: list[Any], seconds: float) -> None:
        """One pose request of ``served`` (its answers) took ``seconds``."""
        self.pose_seconds.labels(served.name).observe(seconds)
        for result in results:
            self.answers.labels(served.name, str(bool(result.found)).lower()).inc()
            if result.confidence is not None:
                self.hypotheses.labels(served.name).observe(result.confidence.get("hypotheses", 0))

    def queue(self, depth: int) -> None:
        self.queue_depth.set(depth)

    def models(self, model_ids: dict[str, str]) -> None:
        self.model.clear()
        for name, model_id in model_ids.items():
            self.model.labels(name, model_id).set(1)

    def expose(self, app: Any, **route_options: Any) -> None:
        """Count the app's requests and serve everything at ``/metrics``."""
        instrumentator = Instrumentator(excluded_handlers=["/metrics"], registry=self.registry)
        instrumentator.instrument(app).expose(app, include_in_schema=True, **route_options)
