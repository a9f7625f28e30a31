"""A minimal webhook receiver: the tests' destination, and a way to watch deliveries.

    python -m agents.local.webhook_receiver --port 9000 [--secret S]

prints each delivery (path, event, whether its signature checks out) as one JSON line.
Paths starting with ``/fail`` answer 500, so retries can be seen.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def signature_ok(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Whether ``X-Webhook-Signature`` is the HMAC-SHA256 of ``<timestamp>.<body>``."""
    timestamp = headers.get("x-webhook-timestamp", "")
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest(headers.get("x-webhook-signature", ""),
                               f"sha256={expected.hexdigest()}")


class Receiver:
    """An HTTP server in a thread recording every POST: ``deliveries`` (path, headers with
    lowercased names, raw body, parsed JSON)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, echo: bool = False,
                 secret: str | None = None):
        self.deliveries: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                delivery = {"path": self.path, "body": body,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "json": json.loads(body or b"null")}
                receiver.deliveries.append(delivery)
                if echo:
                    signed = secret and signature_ok(secret, delivery["headers"], body)
                    print(json.dumps({"path": self.path, "signature_ok": signed,
                                      "json": delivery["json"]}), flush=True)
                self.send_response(500 if self.path.startswith("/fail") else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.url = f"http://{host}:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def at(self, path: str) -> list[dict[str, Any]]:
        return [d for d in self.deliveries if d["path"] == path]

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--secret", help="webhooks.secret, to check signatures")
    args = parser.parse_args()
    with Receiver(args.host, args.port, echo=True, secret=args.secret) as receiver:
        print(f"receiving webhooks at {receiver.url}", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
