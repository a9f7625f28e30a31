"""``python -m agents.local.stub_model --host 127.0.0.1 --port 8001 [--ttft-ms F] ...``"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Sequence

import uvicorn
from pydantic import ValidationError

from agents.local.stub_model.app import StubConfig, create_app


def parse_args(argv: Sequence[str] | None = None) -> tuple[str, int, StubConfig]:
    parser = argparse.ArgumentParser(prog="python -m agents.local.stub_model",
                                     description="OpenAI-compatible stub model server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="time to first token")
    parser.add_argument("--tokens-per-s", type=float, default=0.0, help="0: no pacing")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of failing calls")
    parser.add_argument("--fault-status", type=int, default=500, help="429, 500 or 503")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault sequence")
    args = parser.parse_args(argv)
    try:
        config = StubConfig(ttft_ms=args.ttft_ms, tokens_per_s=args.tokens_per_s,
                            fault_rate=args.fault_rate, fault_status=args.fault_status,
                            seed=args.seed)
    except ValidationError as exc:
        parser.error(str(exc))
    return args.host, args.port, config


class AnnouncingServer(uvicorn.Server):
    """Prints the URL only once the socket really accepts connections (callers wait for it)."""

    def __init__(self, config: uvicorn.Config, url: str):
        super().__init__(config)
        self.url = url

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(f"stub model listening on {self.url}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    host, port, config = parse_args(argv)
    # Idle connections are kept longer than the OpenAI client keeps them (httpx: 5 s, the
    # same as uvicorn's default), so the client never reuses one the server is closing
    # (a ReadError that fails a model call the client does not retry).
    server_config = uvicorn.Config(create_app(config), host=host, port=port,
                                   log_level="warning", workers=1, timeout_keep_alive=75)
    AnnouncingServer(server_config, f"http://{host}:{port}/v1").run()


if __name__ == "__main__":
    main()
