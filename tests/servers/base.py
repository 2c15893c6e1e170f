"""A loopback JSON server harness shared by the vendor contract servers.

Each contract server subclasses `ContractServer` and implements `handle()`; the harness runs it on
127.0.0.1 with a random port in a background thread, serialises handling under one lock (so the
store stays consistent under concurrent clients) and logs every request with its arrival time.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Reply:
    """What a contract server answers: status, JSON body (None: no body) and extra headers;
    `text` is a body that is not JSON (e.g. CSV), sent as `content_type`."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    text: str | None = None
    content_type: str = "text/csv; charset=UTF-8"
    # Faults after the request was handled: wait this many seconds before answering, and/or
    # `drop` the connection without any answer (the client sees a reset or its timeout).
    wait: float = 0.0
    drop: bool = False


@dataclass(frozen=True)
class Incoming:
    """One parsed request as a contract server sees it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON; ValueError when it is not JSON."""
        return json.loads(self.body.decode("utf-8"))

    @property
    def digest(self) -> str:
        """Identity of the request's content: a resent request has the same digest."""
        h = hashlib.sha256(f"{self.method} {self.path} {sorted(self.query.items())}".encode())
        h.update(self.body)
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class Logged:
    """A request as it arrived (monotonic clock) and how it was answered."""

    at: float
    method: str
    path: str
    status: int
    digest: str
    retry_after: float | None  # seconds the answer asked the client to wait, if any


class ContractServer:
    """Base of the vendor servers: start/stop, URL, request log; subclasses implement handle()."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.log: list[Logged] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def handle(self, request: Incoming) -> Reply:
        """Answer one request; called with `self.lock` held."""
        raise NotImplementedError

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:54321 (no trailing slash)."""
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> ContractServer:
        """Listen on a random loopback port and serve in a daemon thread."""
        handler = _handler_for(self)
        self._httpd = _Server(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def dispatch(self, request: Incoming) -> Reply:
        """Handle under the lock and log the answer with the request's arrival time."""
        arrived = time.monotonic()
        with self.lock:
            reply = self.handle(request)
            retry = reply.headers.get("Retry-After")
            self.log.append(
                Logged(
                    arrived,
                    request.method,
                    request.path,
                    reply.status,
                    request.digest,
                    float(retry) if retry is not None else None,
                )
            )
        return reply

    def busiest(self, seconds: float) -> int:
        """The most requests that arrived within any `seconds`-long span (rate-limit checks)."""
        with self.lock:
            times = sorted(entry.at for entry in self.log)
        most, first = 0, 0
        for last, at in enumerate(times):
            while at - times[first] >= seconds:
                first += 1
            most = max(most, last - first + 1)
        return most

    def early_retries(self) -> list[Logged]:
        """Resent requests that arrived before the Retry-After of their previous answer had passed.

        A request is a resend of an earlier one when its method, path, query and body are equal
        (so a client that changes the body on a retry, e.g. new trace ids, is not recognised).
        """
        with self.lock:
            log = list(self.log)
        waits: dict[str, float] = {}
        early: list[Logged] = []
        for entry in log:
            not_before = waits.pop(entry.digest, None)
            if not_before is not None and entry.at < not_before:
                early.append(entry)
            if entry.retry_after is not None:
                waits[entry.digest] = entry.at + entry.retry_after
        return early


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up (a cut answer, a killed run) is not a server error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def new_correlation_id() -> str:
    """A random id, as vendors put in error bodies."""
    return str(uuid.uuid4())


def _handler_for(server: ContractServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real APIs; every reply has Content-Length
        disable_nagle_algorithm = True  # headers and body go out in separate writes

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            request = Incoming(
                method=self.command,
                path=parts.path,
                query=parse_qs(parts.query, keep_blank_values=True),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
            )
            try:
                reply = server.dispatch(request)
            except Exception as exc:  # a bug in a contract server must show, not hang the client
                reply = Reply(500, {"message": f"contract server bug: {exc!r}"})
            if reply.wait:
                time.sleep(reply.wait)  # outside the lock: other clients are served meanwhile
            if reply.drop:
                self.close_connection = True
                return
            if reply.text is not None:
                payload = reply.text.encode("utf-8")
            else:
                payload = b"" if reply.body is None else json.dumps(reply.body).encode("utf-8")
            self.send_response(reply.status)
            if reply.text is not None:
                self.send_header("Content-Type", reply.content_type)
            elif reply.body is not None:
                self.send_header("Content-Type", "application/json;charset=UTF-8")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            try:
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client stopped reading (e.g. a cut answer)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the request log is ContractServer.log

    return Handler
