"""The service as a program: ``python -m service --host H --port P --workers K``.

Settings come from the ``CLOUDPOSE_*`` environment (:class:`cloudpose.settings.Settings`);
``cloudpose serve`` sets the ones its options name and then becomes this program.
"""

from __future__ import annotations

import argparse

from cloudpose.settings import Settings
from service.logs import log_config
from service.server import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    settings = Settings()
    serve(
        args.host,
        args.port,
        workers=args.workers,
        header_timeout_s=settings.header_timeout_s,
        keep_alive_s=settings.keep_alive_s,
        max_connections=settings.max_connections,
        log_config=log_config(settings.log_format),
    )


if __name__ == "__main__":
    main()
