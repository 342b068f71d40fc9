"""``edgeloop api``: run the cloud REST API with uvicorn, or check a running one.

Settings come from ``--config api.toml`` and ``EDGELOOP_API_*`` variables
(``cloud.api.settings.ApiSettings``); ``--host``/``--port`` override them. With
``tls_cert_file`` and ``tls_key_file`` it serves HTTPS (uvicorn's ``ssl_certfile``,
``ssl_keyfile``); in production a non-loopback ``host`` needs them.
``--check`` asks the configured address's ``/healthz`` and exits 0 when the API
and its Redis answer, 1 otherwise (a container health check).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML settings (EDGELOOP_API_* variables win)")
    p.add_argument("--host", help="address to listen on (default: the settings' host)")
    p.add_argument("--port", type=int, help="port to listen on (default: the settings' port)")
    p.add_argument("--check", action="store_true", help="exit 0 if the API at host:port is healthy")


def run(args: argparse.Namespace) -> int:
    from cloud.api.settings import ApiSettings
    from shared.config import load_settings

    overrides: dict[str, Any] = {k: v for k in ("host", "port") if (v := getattr(args, k))}
    settings = load_settings(ApiSettings, args.config, **overrides)
    if args.check:
        return _check(f"{settings.scheme}://{settings.host}:{settings.port}/healthz")

    import uvicorn

    from cloud.api.app import create_app

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level.lower(),
            log_config=None,
            access_log=False,
            ssl_certfile=settings.tls_cert_file,
            ssl_keyfile=settings.tls_key_file,
        )
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # uvicorn handles SIGTERM/SIGINT while it serves, then restores this handler
        # and re-raises the signal: absorbing it makes a clean stop exit 0.
        server.should_exit = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    logger.info(
        "serving fleet %r on %s://%s:%d",
        settings.fleet,
        settings.scheme,
        settings.host,
        settings.port,
    )
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _check(url: str) -> int:
    import httpx

    try:
        # the API's own health: the point is that it answers, not whose certificate it has
        r = httpx.get(url, timeout=5, verify=not url.startswith("https://"))
        body = r.json()
    except (httpx.HTTPError, ValueError) as e:
        print(f"unhealthy: {url}: {e}", file=sys.stderr)
        return 1
    if r.status_code != 200:
        print(f"unhealthy: {url}: redis {body.get('redis', '?')}", file=sys.stderr)
        return 1
    print(f"healthy: fleet {body.get('fleet')}, redis {body.get('redis')}")
    return 0
