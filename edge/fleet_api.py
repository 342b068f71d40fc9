"""The cloud REST API as an edge without Redis sees it: where its updates come from.

An edge with ``update_source = "http"`` reads the fleet's TUF repository
(``/v1/tuf/<name>`` and ``/v1/tuf/targets/<path>``) and its director orders
(``/v1/director/<model>/<device>``) over HTTP(S) with its device token, instead of
the Redis keys the same files live at. The API vouches for nothing: every file is
checked by the ngclient Updater (signatures, versions, expiry; a target's length and
hashes) and every order by the director gate, exactly as when they come from Redis.

``HttpFetcher`` is the Updater's ``FetcherInterface``. Like ``RedisFetcher`` it never
reads a file whole past what the Updater allows: a declared ``Content-Length`` over the
limit is refused before a byte of the body is read, and a body without one is cut one
chunk past it. Each download has a deadline (``deadline_s``): the socket waits at most
what is left of it and the chunks are read a piece at a time, so neither a stalled nor a
trickling server holds the updater longer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import urllib3
from tuf.api import exceptions as tuf_errors
from tuf.ngclient import FetcherInterface

from shared.errors import IntegrityError, Unavailable
from shared.keys import check_name

logger = logging.getLogger(__name__)

__all__ = ["ApiTimeout", "ApiUnreachable", "FleetApi", "HttpFetcher", "Orders", "detail"]

#: Bytes per socket read of a download: what one read holds in memory at most.
CHUNK = 64 * 1024
#: The most an orders answer may take (two signed orders and three sha256s: ~2 KiB).
MAX_ORDERS_BYTES = 256 * 1024


class ApiUnreachable(Unavailable):
    """The API did not answer (connection refused, TLS failure, timeout, 5xx): an outage,
    retried with backoff, never a refusal of what it serves."""


class ApiTimeout(ApiUnreachable):
    """The API did not answer within the time given (a download's: its deadline)."""


@dataclass(frozen=True)
class Orders:
    """What decides one device's version of a model, as the API read it from Redis."""

    device_order: bytes | None = None
    fleet_order: bytes | None = None
    target: str | None = None
    assignment: str | None = None
    pin: str | None = None


class FleetApi:
    """An HTTP(S) client of the cloud API with a bearer token.

    ``ca_file``: the CA that signed an ``https://`` API's certificate (default: the
    system's CAs); the certificate and host name are always verified.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        ca_file: Path | None = None,
        timeout_s: float = 10.0,
        deadline_s: float = 60.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}", "User-Agent": "edgeloop-edge"}
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self._pool = urllib3.PoolManager(ssl_context=context, retries=False)
        self.timeout_s, self.deadline_s = timeout_s, deadline_s

    @property
    def metadata_url(self) -> str:
        """The ngclient Updater's ``metadata_base_url``."""
        return f"{self.base_url}/v1/tuf/"

    @property
    def targets_url(self) -> str:
        """The ngclient Updater's ``target_base_url``."""
        return f"{self.base_url}/v1/tuf/targets/"

    def open(self, url: str, timeout_s: float | None = None) -> urllib3.BaseHTTPResponse:
        """GET ``url`` with the token; the body not read yet. ApiUnreachable when the API
        cannot be reached or answers 5xx; any other status is the caller's to judge."""
        if not url.startswith(self.base_url + "/"):
            raise IntegrityError(f"{url} is not a URL of the API at {self.base_url}")
        timeout = self.timeout_s if timeout_s is None else max(timeout_s, 0.001)
        try:
            response = self._pool.request(
                "GET",
                url,
                headers=self._headers,
                preload_content=False,
                timeout=urllib3.Timeout(connect=min(timeout, self.timeout_s), read=timeout),
                redirect=False,
            )
        except urllib3.exceptions.TimeoutError as e:
            raise ApiTimeout(f"the API at {self.base_url} did not answer in time: {e}") from e
        except urllib3.exceptions.HTTPError as e:
            raise ApiUnreachable(f"the API at {self.base_url} is unreachable: {e}") from e
        if response.status >= 500:
            _discard(response)
            raise ApiUnreachable(f"the API at {self.base_url} answered {response.status}")
        return response

    def post(self, path: str, body: bytes, max_answer: int = 64 * 1024) -> tuple[int, bytes]:
        """POST ``body`` (JSON) to ``path``; the status and (at most ``max_answer`` bytes of)
        the answer. ApiUnreachable when the API cannot be reached or answers 5xx; any other
        status is the caller's to judge. Never retried here: the caller knows whether a
        resend is safe."""
        url = self.base_url + path
        try:
            response = self._pool.request(
                "POST",
                url,
                body=body,
                headers={**self._headers, "Content-Type": "application/json"},
                preload_content=False,
                timeout=urllib3.Timeout(connect=self.timeout_s, read=self.timeout_s),
                redirect=False,
            )
            try:
                answer = response.read(max_answer, decode_content=True)
            finally:
                _discard(response)
        except urllib3.exceptions.TimeoutError as e:
            raise ApiTimeout(f"the API at {self.base_url} did not answer in time: {e}") from e
        except urllib3.exceptions.HTTPError as e:
            raise ApiUnreachable(f"the API at {self.base_url} is unreachable: {e}") from e
        if response.status >= 500:
            raise ApiUnreachable(
                f"POST {path}: the API at {self.base_url} answered {response.status}"
            )
        return response.status, answer

    def orders(self, model: str, device_id: str) -> Orders:
        """The director's orders (and the unsigned target, assignment and pin) for
        ``device_id``'s ``model``. ApiUnreachable on an outage; IntegrityError when the
        API refuses (401/403: the token) or answers something that is no such document."""
        path = f"/v1/director/{check_name('model', model)}/{check_name('device id', device_id)}"
        response = self.open(self.base_url + path)
        try:
            body = response.read(MAX_ORDERS_BYTES + 1, decode_content=True)
        except urllib3.exceptions.HTTPError as e:
            raise ApiUnreachable(f"the API at {self.base_url} broke off: {e}") from e
        finally:
            _discard(response)
        if response.status != 200:
            raise IntegrityError(f"GET {path}: {response.status} {detail(body)}")
        if len(body) > MAX_ORDERS_BYTES:
            raise IntegrityError(f"GET {path}: the answer is over {MAX_ORDERS_BYTES} bytes")
        try:
            doc = json.loads(body)
            text = {
                f: doc.get(f)
                for f in ("device_order", "fleet_order", "target", "assignment", "pin")
            }
            if not all(v is None or isinstance(v, str) for v in text.values()):
                raise ValueError("a field is neither a string nor null")
        except (ValueError, AttributeError) as e:
            raise IntegrityError(f"GET {path}: not an orders document: {e}") from e
        return Orders(
            device_order=_encoded(text["device_order"]),
            fleet_order=_encoded(text["fleet_order"]),
            target=text["target"],
            assignment=text["assignment"],
            pin=text["pin"],
        )

    def close(self) -> None:
        self._pool.clear()


def _encoded(value: str | None) -> bytes | None:
    return None if value is None else value.encode("utf-8")


def detail(body: bytes) -> str:
    """The one-line ``detail`` of an API error answer (empty if it has none)."""
    try:
        return str(json.loads(body)["detail"])[:200]
    except (ValueError, KeyError, TypeError):
        return ""


class HttpFetcher(FetcherInterface):
    """Reads the fleet's TUF metadata and target files from the API (see the module
    docstring): refused over the Updater's limit before the body is read, and cut at the
    download deadline."""

    def __init__(self, api: FleetApi, chunk: int = CHUNK) -> None:
        self._api, self._chunk = api, chunk
        self._local = threading.local()  # the limit of the download in progress

    @contextlib.contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        self._local.limit = max_length
        try:
            with super().download_file(url, max_length) as f:
                yield f
        finally:
            self._local.limit = None

    def _fetch(self, url: str) -> Iterator[bytes]:
        deadline = time.monotonic() + self._api.deadline_s
        try:
            response = self._api.open(url, timeout_s=self._api.deadline_s)
        except ApiTimeout as e:  # stalled before the headers: abandoned at the deadline too
            raise tuf_errors.SlowRetrievalError(str(e)) from e
        except ApiUnreachable as e:
            raise tuf_errors.DownloadError(str(e)) from e
        except IntegrityError as e:
            raise tuf_errors.DownloadHTTPError(str(e), 403) from e
        if response.status != 200:
            _discard(response)
            # 403/404 end the root chain for ngclient; any other status refuses the file.
            raise tuf_errors.DownloadHTTPError(f"{url}: HTTP {response.status}", response.status)
        limit = getattr(self._local, "limit", None)
        declared = response.headers.get("Content-Length")
        size = int(declared) if declared is not None and declared.isdigit() else None
        if limit is not None and size is not None and size > limit:
            _discard(response)
            raise tuf_errors.DownloadLengthMismatchError(
                f"{url} holds {declared} bytes, more than the {limit} allowed"
            )
        return self._chunks(url, response, deadline)

    def _chunks(
        self, url: str, response: urllib3.BaseHTTPResponse, deadline: float
    ) -> Iterator[bytes]:
        # A timer shuts the socket at the deadline: a read blocked on a stalled server
        # ends at once (as the Redis path's download connection is cut).
        cut = threading.Event()
        timer = threading.Timer(max(deadline - time.monotonic(), 0.0), _shutdown, (response, cut))
        timer.daemon = True
        timer.start()
        try:
            while True:
                try:
                    data = response.read1(self._chunk)
                except (urllib3.exceptions.HTTPError, OSError) as e:
                    if cut.is_set():
                        raise self._late(url) from e
                    raise tuf_errors.DownloadError(f"{url}: {e}") from e
                if cut.is_set() or time.monotonic() > deadline:
                    raise self._late(url)
                if not data:
                    response.release_conn()  # read to its end: the connection is reusable
                    return
                yield data
        finally:
            timer.cancel()
            _discard(response)

    def _late(self, url: str) -> tuf_errors.SlowRetrievalError:
        return tuf_errors.SlowRetrievalError(
            f"{url} was not read within the download deadline of {self._api.deadline_s:g}s; "
            "abandoned"
        )


def _discard(response: urllib3.BaseHTTPResponse) -> None:
    """Close a response whose body may be left unread: its connection must never go back
    to the pool, where the next request would read the rest of this body as its answer."""
    with contextlib.suppress(Exception):
        response.close()
    with contextlib.suppress(Exception):
        response.release_conn()


def _shutdown(response: urllib3.BaseHTTPResponse, cut: threading.Event) -> None:
    cut.set()
    with contextlib.suppress(ValueError, RuntimeError, OSError):
        response.shutdown()  # type: ignore[attr-defined]
