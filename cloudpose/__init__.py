"""cloudpose: the rigid pose of known objects in point clouds and depth frames.

The public surface is :mod:`cloudpose.api` (``Client``, ``Estimator`` and the result types),
re-exported here. The library's layers, each a sub-package: :mod:`cloudpose.geometry` and
:mod:`cloudpose.io` at the bottom, then :mod:`cloudpose.store`, :mod:`cloudpose.registration`,
:mod:`cloudpose.estimation` and :mod:`cloudpose.detection`.
"""

from __future__ import annotations

from typing import Any

from cloudpose import api
from cloudpose.api import *  # noqa: F403
from cloudpose.api import __all__  # noqa: F401


def __getattr__(name: str) -> Any:
    return getattr(api, name)  # the names api loads when first asked for
