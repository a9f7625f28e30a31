"""A lean SSE reader for the load generator: frames as (event, raw data bytes).

The client shares two cores with the servers it measures, so it parses as little as it
can: it splits frames, and leaves JSON decoding to the caller, who decodes only the few
events it needs. Accepts both ``\\n`` and ``\\r\\n`` line ends (sse-starlette uses the latter).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import StreamReader


def parse_frame(frame: bytes) -> tuple[str, bytes] | None:
    """``(event, data)`` of one frame; None for comments (heartbeats) and empty frames."""
    event, data = "message", []
    for line in frame.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[5:].lstrip(b" "))
        elif line.startswith(b"event:"):
            event = line[6:].strip().decode()
    if not data:
        return None
    return event, b"\n".join(data)


async def frames(content: StreamReader) -> AsyncIterator[tuple[str, bytes]]:
    """Yield every frame of a response body until the server closes it."""
    buffer = b""
    async for chunk in content.iter_any():
        buffer += chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        while True:
            end = buffer.find(b"\n\n")
            if end < 0:
                break
            frame, buffer = buffer[:end], buffer[end + 2:]
            parsed = parse_frame(frame)
            if parsed is not None:
                yield parsed
    if buffer.strip():
        parsed = parse_frame(buffer)
        if parsed is not None:
            yield parsed
