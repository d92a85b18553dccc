"""A real HTTP server on loopback that records what it receives (webhooks, fake APIs)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


# (method, path) -> (status, body dict) or (status, body dict, headers); return None to fall
# back to the default 200 {}.
Responder = Callable[[Received], tuple[int, Any] | tuple[int, Any, dict[str, str]] | None]


@dataclass
class Receiver:
    """Records every request; ``fail_next`` answers N requests with ``fail_status``."""

    requests: list[Received] = field(default_factory=list)
    fail_next: int = 0
    fail_status: int = 500
    delay_s: float = 0.0
    responder: Responder | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout: float = 30
    ) -> list[Received]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                snapshot = list(self.requests)
            if predicate(snapshot):
                return snapshot
            time.sleep(0.05)
        raise TimeoutError(f"receiver: condition not met in {timeout}s; got {len(self.requests)}")


def serve(receiver: Receiver) -> tuple[ThreadingHTTPServer, threading.Thread]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _handle(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            req = Received(
                self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
            )
            with receiver.lock:
                receiver.requests.append(req)
                failing = receiver.fail_next > 0
                if failing:
                    receiver.fail_next -= 1
            if receiver.delay_s:
                time.sleep(receiver.delay_s)
            status, payload = receiver.fail_status if failing else 200, {}
            extra: dict[str, str] = {}
            if not failing and receiver.responder is not None:
                answer = receiver.responder(req)
                if answer is not None:
                    status, payload = answer[0], answer[1]
                    extra = answer[2] if len(answer) > 2 else {}
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        do_POST = do_PUT = do_GET = do_PATCH = do_DELETE = _handle

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread
