"""A minimal OTLP/HTTP (protobuf) trace receiver: the tests' collector, and a trace sink
for people without a tracing stack.

    python -m agents.local.otlp_receiver --port 4318 --out spans.jsonl

then ``OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 make run``: every span the
cluster exports is appended to ``spans.jsonl`` as one JSON object (trace/span/parent ids,
name, service, times, attributes, status). ``python -m agents.local.otlp_receiver --show
spans.jsonl`` prints each trace as a tree.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


def spans_of(body: bytes) -> list[dict[str, Any]]:
    """The spans of one export request, flattened to dicts."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    out = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append({
                    "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                    "parent_id": span.parent_span_id.hex() or None, "name": span.name,
                    "kind": span.kind, "start_ns": span.start_time_unix_nano,
                    "end_ns": span.end_time_unix_nano,
                    "status": span.status.code,  # 0 unset, 1 ok, 2 error
                    "service": resource.get("service.name"),
                    "instance": resource.get("service.instance.id"),
                    "pid": resource.get("process.pid"),
                    "attributes": {a.key: _value(a.value) for a in span.attributes},
                    "links": [{"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex()}
                              for link in span.links],
                })
    return out


class Receiver:
    """``with Receiver() as r: ... r.url ... r.spans``: collects spans in memory (and
    appends them to ``out`` if given); ``keep=False`` only counts them (a long benchmark)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, out: Path | None = None,
                 keep: bool = True):
        self.spans: list[dict[str, Any]] = []
        self.count = 0
        self.keep = keep
        self.out = out
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                status = 200
                try:
                    receiver.add(spans_of(body))
                except Exception:  # a malformed export: tell the exporter, keep serving
                    status = 400
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(status)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(self, spans: list[dict[str, Any]]) -> None:
        with self._lock:
            self.count += len(spans)
            if self.keep:
                self.spans.extend(spans)
            if self.out is not None:
                with self.out.open("a") as f:
                    f.writelines(json.dumps(s) + "\n" for s in spans)

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def tree(spans: list[dict[str, Any]]) -> str:
    """Spans of one or more traces as indented lines (name, service, duration)."""
    children: dict[str | None, list[dict]] = defaultdict(list)
    ids = {s["span_id"] for s in spans}
    for s in sorted(spans, key=lambda s: s["start_ns"]):
        children[s["parent_id"] if s["parent_id"] in ids else None].append(s)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for s in children.get(parent, []):
            ms = (s["end_ns"] - s["start_ns"]) / 1e6
            tokens = s["attributes"].get("gen_ai.usage.output_tokens")
            extra = f"  out_tokens={tokens}" if tokens is not None else ""
            lines.append(f"{'  ' * depth}{s['name']}  [{s['service']}]  {ms:.1f} ms{extra}"
                         f"{'  ERROR' if s['status'] == 2 else ''}")
            walk(s["span_id"], depth + 1)

    walk(None, 0)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318)
    parser.add_argument("--out", type=Path, default=Path("spans.jsonl"))
    parser.add_argument("--discard", action="store_true",
                        help="keep nothing (no file, no memory): count spans, print the count")
    parser.add_argument("--show", type=Path, help="print the traces of a spans file")
    args = parser.parse_args()
    if args.show:
        spans = [json.loads(line) for line in args.show.read_text().splitlines() if line]
        by_trace: dict[str, list] = defaultdict(list)
        for s in spans:
            by_trace[s["trace_id"]].append(s)
        for trace_id, trace_spans in by_trace.items():
            print(f"trace {trace_id}\n{tree(trace_spans)}\n")
        return
    receiver = Receiver(args.host, args.port, None if args.discard else args.out,
                        keep=False)
    print(f"OTLP/HTTP receiver at {receiver.url}/v1/traces, "
          f"{'discarding spans' if args.discard else f'writing {args.out}'}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stopped: say how many came
    try:
        receiver.server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        print(f"SPANS {receiver.count}", flush=True)


if __name__ == "__main__":
    main()
