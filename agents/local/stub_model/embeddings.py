"""The stub's embeddings (``/v1/embeddings``): a hashed bag of words, normalised.

Deterministic and offline, yet semantic enough for tests: each content word (lowercased,
a plural ``s`` dropped, stopwords skipped) adds +-1 at a position its hash picks, so texts
that share words are near in cosine distance and texts that share none are about
orthogonal. Token arrays (what a client sends after tokenising) count each token id as a
word. ``dimensions`` is honoured as OpenAI's ``text-embedding-3`` models honour it.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agents.local.stub_model.policy import STOPWORDS

DEFAULT_DIMENSIONS = 1536  # text-embedding-3-small's
WORD_RE = re.compile(r"[a-z0-9]+")

Input = str | list[int]


class EmbeddingRequest(BaseModel):
    """The fields of an embeddings request the stub uses; others are accepted."""

    model_config = ConfigDict(extra="allow")

    input: Input | list[Input] = Field(description="a text, a token array, or a list of them")
    model: str = "stub-embedding"
    dimensions: int = Field(DEFAULT_DIMENSIONS, ge=1, le=4096)
    encoding_format: Literal["float", "base64"] = "float"

    def inputs(self) -> list[Input]:
        if isinstance(self.input, str) or (self.input and isinstance(self.input[0], int)):
            return [self.input]  # type: ignore[list-item]
        return list(self.input)  # type: ignore[arg-type]


def words(value: Input) -> list[str]:
    """The content words of a text (or a token array's ids)."""
    if not isinstance(value, str):
        return [str(token) for token in value]
    found = [w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
             for w in WORD_RE.findall(value.lower())]
    return [w for w in found if w not in STOPWORDS]


def embed(value: Input, dimensions: int) -> list[float]:
    """A unit vector; a text without content words gets the empty word's, never zero."""
    vector = [0.0] * dimensions
    for word in words(value) or [""]:
        digest = hashlib.sha256(word.encode()).digest()
        vector[int.from_bytes(digest[:8], "big") % dimensions] += 1.0 if digest[8] & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def encoded(vector: list[float], encoding_format: str) -> list[float] | str:
    """``base64``: little-endian float32, as OpenAI sends it (its client asks for it)."""
    if encoding_format == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def embeddings_body(req: EmbeddingRequest) -> dict:
    """The response of ``POST /v1/embeddings``; usage counts a token per word."""
    inputs = req.inputs()
    tokens = sum(max(len(words(value)), 1) for value in inputs)
    return {
        "object": "list", "model": req.model,
        "data": [{"object": "embedding", "index": i,
                  "embedding": encoded(embed(value, req.dimensions), req.encoding_format)}
                 for i, value in enumerate(inputs)],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
