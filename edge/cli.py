"""``edgeloop-edge``: run the edge daemon and its local HTTP API, or check its health.

    edgeloop-edge --config edge.toml           serve until SIGTERM/SIGINT
    edgeloop-edge --config edge.toml --check   exit 0 if this device reports 'serving'

Settings come from the TOML file with ``EDGELOOP_EDGE_*`` environment variables
on top. A user error (bad config, missing key file, unusable state directory)
prints one line and exits 2. ``--check`` exits 1 when the device is unhealthy
or Redis cannot be reached. This is the only module that configures logging,
and it imports the daemon only after the arguments parse, so that ``--help``
works on any install.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from shared.config import load_settings
from shared.errors import ConfigError

if TYPE_CHECKING:
    from edge.settings import EdgeSettings

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_UNHEALTHY, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgeloop-edge",
        description="Serve quantized TFLite models at the edge with a local fallback, "
        "stream feedback to the cloud trainers and apply their signed updates.",
        epilog="Every setting can also be given as an environment variable "
        "EDGELOOP_EDGE_<FIELD>, which wins over the file (e.g. EDGELOOP_EDGE_REDIS_URL).",
    )
    p.add_argument("--config", type=Path, metavar="FILE", help="TOML settings file (edge.toml)")
    p.add_argument(
        "--check",
        action="store_true",
        help="health check: exit 0 if this device's health key in Redis is fresh and its "
        "state is 'serving', 1 otherwise",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        from edge.settings import EdgeSettings

        settings = load_settings(EdgeSettings, args.config)
        return check(settings) if args.check else serve(settings)
    except ConfigError as e:
        print(f"edgeloop-edge: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK


def serve(settings: EdgeSettings) -> int:
    """Run the daemon and the HTTP API until SIGTERM/SIGINT, then stop cleanly."""
    import uvicorn

    from edge.api import create_app
    from edge.daemon import EdgeDaemon

    try:
        daemon = EdgeDaemon(settings)
    except OSError as e:
        raise ConfigError(f"cannot use state_dir {settings.state_dir}: {e.strerror or e}") from e
    try:
        daemon.start()
    except ImportError as e:  # no TFLite runtime on this machine: an install problem
        daemon.stop()
        raise ConfigError(str(e)) from e
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(daemon),
            host=settings.http_host,
            port=settings.http_port,
            log_config=None,  # logging is configured above; uvicorn's loggers propagate
            access_log=False,
            lifespan="off",
        )
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # uvicorn handles SIGTERM/SIGINT while it runs, then restores this
        # handler and re-raises the signal: here that is a no-op, so the daemon
        # below still drains its feedback instead of the process dying mid-way.
        server.should_exit = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        daemon.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EXIT_OK


def check(settings: EdgeSettings) -> int:
    """Exit status of the health check (arq-style: the exit code is the answer)."""
    from edge.connections import REDIS_ERRORS, connect, describe, redact
    from shared.errors import MessageError
    from shared.keys import FleetKeys
    from shared.messages import ModelServing
    from shared.status_report import read_health

    if settings.uplink == "http":
        print(
            f"unhealthy: cannot tell: {settings.device_id} reports through the API (uplink = "
            "http), not to a health key in Redis; ask its local GET /v1/health instead"
        )
        return EXIT_UNHEALTHY
    client = connect(settings.redis_url, tls=settings.redis_options())
    try:
        status = read_health(client, FleetKeys(settings.fleet), settings.device_id)
    except REDIS_ERRORS as e:
        print(f"unhealthy: cannot reach Redis at {redact(settings.redis_url)}: {describe(e)}")
        return EXIT_UNHEALTHY
    except MessageError as e:
        print(f"unhealthy: the health key of {settings.device_id} does not parse: {e}")
        return EXIT_UNHEALTHY
    finally:
        client.close()
    if status is None:
        print(
            f"unhealthy: no report from {settings.device_id} in the last {settings.status_ttl_s}s"
        )
        return EXIT_UNHEALTHY
    age = time.time() - status.ts
    if age > settings.status_ttl_s:
        print(f"unhealthy: last report from {settings.device_id} is {age:.0f}s old")
        return EXIT_UNHEALTHY
    # Every model the device serves must be serving (an edge of one model reports
    # only the top-level fields when it predates EdgeStatus.models).
    reports: list[ModelServing | None] = list(status.models.values()) or [
        status.serving(status.model)
    ]
    for report in reports:
        if report is None or report.state != "serving":
            state = report.state if report else "missing"
            error = (report.last_error if report else None) or "no error recorded"
            model = f" ({report.model})" if report and len(reports) > 1 else ""
            print(f"unhealthy: {settings.device_id}{model} is {state} ({error})")
            return EXIT_UNHEALTHY
    served = ", ".join(f"{r.model} v{r.version}" for r in reports if r is not None)
    print(f"healthy: {settings.device_id} serving {served}, reported {age:.1f}s ago")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
