"""The researcher's document corpus: markdown files indexed with RediSearch in the shared Redis.

Documents live in hashes ``corpus:{corpus}:doc:<id>`` (``title``, ``body``) under the
full-text index ``idx:{corpus}``; on a Redis Cluster all of them (hash tag ``{corpus}``) and the
index live on one shard, which every search goes to. Every process may call
``index_corpus``; only a changed corpus (a new hash under ``corpus:{corpus}:version``) is
written again, under a Redis lock so that concurrent starts agree.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, Field
from redis.asyncio import Redis, RedisCluster
from redis.commands.search import AsyncSearch as Search
from redis.commands.search.field import TextField
from redis.commands.search.index_definition import IndexDefinition, IndexType
from redis.commands.search.query import Query
from redis.exceptions import ResponseError

from agents.keys import CORPUS_DOC as PREFIX
from agents.keys import CORPUS_INDEX as INDEX
from agents.keys import CORPUS_LOCK as LOCK_KEY
from agents.keys import CORPUS_VERSION as VERSION_KEY
from agents.slots import shard_of

SCHEMA = (TextField("title", weight=2.0), TextField("body"))
SCORER = "BM25STD"  # the textbook BM25; RediSearch's TFIDF ranks unions of terms oddly
SNIPPET_CHARS = 200
MAX_TERMS = 16

# Question words and fillers an LLM puts in queries; they only add noise to the ranking.
_STOP_WORD_TEXT = (
    "a about an and are as at be by can could do does did for from has have how i in into is "
    "it its me my of on or our please should so tell that the their them then there these this "
    "to up was we what when where which who why will with would you your"
)
STOP_WORDS = frozenset(_STOP_WORD_TEXT.split())


class Document(BaseModel):
    doc_id: str
    title: str
    body: str


def load_corpus(corpus_dir: Path) -> list[Document]:
    """Each ``<id>.md`` file: its first ``# Title`` line is the title, the rest the body."""
    docs = []
    for path in sorted(Path(corpus_dir).glob("*.md")):
        first, _, rest = path.read_text(encoding="utf-8").partition("\n")
        title = first.lstrip("#").strip() or path.stem
        docs.append(Document(doc_id=path.stem, title=title, body=rest.strip()))
    return docs


def corpus_version(docs: list[Document]) -> str:
    """A hash of the documents and the index schema: it changes exactly when re-indexing is due."""
    schema = [[str(f.name), [str(a) for a in f.args]] for f in SCHEMA]
    payload = json.dumps([schema, "STOPWORDS 0", [d.model_dump() for d in docs]])
    return hashlib.sha256(payload.encode()).hexdigest()


def _index(redis: Redis | RedisCluster) -> Search:
    """The index, on the shard that holds the corpus on a cluster."""
    shard = shard_of(redis, VERSION_KEY)
    return shard.client.ft(shard.index(INDEX))


async def _index_exists(redis: Redis) -> bool:
    try:
        await _index(redis).info()
    except ResponseError:
        return False
    return True


async def index_corpus(redis: Redis, corpus_dir: Path) -> bool:
    """Create the index and load the corpus unless it is already current; True if it wrote."""
    docs = load_corpus(corpus_dir)
    if not docs:
        raise ValueError(f"no *.md documents in {corpus_dir}")
    version = corpus_version(docs)

    async def current() -> bool:
        stored = await redis.get(VERSION_KEY)
        return stored is not None and _text(stored) == version and await _index_exists(redis)

    if await current():
        return False
    async with redis.lock(LOCK_KEY, timeout=60, blocking_timeout=60):
        if await current():  # another process indexed it while we waited
            return False
        if await _index_exists(redis):
            await _index(redis).dropindex(delete_documents=False)
        # No initial scan: racing our writes, it indexed documents twice (RediSearch 2.10),
        # which skews every score. All documents are (re)written below instead.
        await _index(redis).create_index(
            SCHEMA, stopwords=[], skip_initial_scan=True,
            definition=IndexDefinition(prefix=[PREFIX], index_type=IndexType.HASH),
        )
        old = [key async for key in redis.scan_iter(match=f"{PREFIX}*")]
        async with redis.pipeline(transaction=True) as pipe:
            if old:
                pipe.delete(*old)
            for doc in docs:
                pipe.hset(PREFIX + doc.doc_id, mapping={"title": doc.title, "body": doc.body})
            pipe.set(VERSION_KEY, version)
            await pipe.execute()
    return True


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def query_terms(query: str) -> list[str]:
    """The query's words, lowercased, without RediSearch syntax, and without stop words unless
    nothing else is left. Safe because the index has no stop words of its own (``STOPWORDS 0``):
    RediSearch 2.10 crashes the server on some unions of its stop words ("no | such | doc")."""
    words = list(dict.fromkeys(re.findall(r"[^\W_]+", query.lower())))
    kept = [w for w in words if w not in STOP_WORDS] or words
    return kept[:MAX_TERMS]


def snippet(body: str, terms: list[str], size: int = SNIPPET_CHARS) -> str:
    """About ``size`` characters of the body around the first query word it contains."""
    text = " ".join(line.strip("# ").strip() for line in body.splitlines() if line.strip())
    lowered = text.lower()
    hits = [i for i in (lowered.find(t) for t in terms) if i >= 0]
    start = max(0, min(hits) - size // 4) if hits else 0
    if start:
        space = text.find(" ", start)
        start = space + 1 if 0 <= space < min(hits) else start
    part = text[start:start + size]
    if start + size < len(text):
        part = part[: size - 3].rsplit(" ", 1)[0] + "..."
    return part


async def search_corpus(redis: Redis, query: str, limit: int = 3) -> dict:
    if not query.strip():
        raise ValueError("the query is empty; pass a few keywords, e.g. 'redis persistence aof'")
    terms = query_terms(query)
    if not terms:
        return {"query": query, "hits": []}
    search = (
        Query(" | ".join(terms)).scorer(SCORER).with_scores().paging(0, limit)
        .return_fields("title", "body")
    )
    result = await _index(redis).search(search)
    hits = [
        {
            "doc_id": _text(doc.id).removeprefix(PREFIX),
            "title": _text(doc.title),
            "snippet": snippet(_text(doc.body), terms),
            "score": round(float(doc.score), 4),
        }
        for doc in result.docs
    ]
    return {"query": query, "hits": hits}


async def read_document(redis: Redis, doc_id: str) -> dict:
    clean = doc_id.strip().removesuffix(".md")
    fields = await redis.hgetall(PREFIX + clean) if clean else {}
    if not fields:
        raise ValueError(f"no document {doc_id!r}; use search_corpus to find document ids")
    fields = {_text(k): _text(v) for k, v in fields.items()}
    return {"doc_id": clean, "title": fields.get("title", clean), "text": fields.get("body", "")}


class SearchArgs(BaseModel):
    query: str = Field(description="A few keywords to search for, e.g. 'redis aof fsync'.")
    limit: int = Field(3, ge=1, le=10, description="How many hits to return, best first (1-10).")


class ReadArgs(BaseModel):
    doc_id: str = Field(description="A document id from a search_corpus hit, e.g. 'redis-streams'.")


def corpus_tools(redis: Redis, corpus_dir: Path) -> list[BaseTool]:
    async def _search(query: str, limit: int = 3) -> str:
        try:
            return json.dumps(await search_corpus(redis, query, limit))
        except ResponseError as exc:
            if "no such index" not in str(exc).lower():
                raise
            # The index is gone (a FLUSHDB anywhere, a restore without it): rebuild, retry.
            await index_corpus(redis, corpus_dir)
            return json.dumps(await search_corpus(redis, query, limit))

    async def _read(doc_id: str) -> str:
        return json.dumps(await read_document(redis, doc_id))

    return [
        StructuredTool.from_function(
            coroutine=_search, name="search_corpus", args_schema=SearchArgs,
            description="Full-text search of the document corpus. Returns the best hits with "
                        "doc_id, title, snippet and score; read a hit with read_document.",
            metadata={"progress": "Searching corpus for {query!r}..."},
        ),
        StructuredTool.from_function(
            coroutine=_read, name="read_document", args_schema=ReadArgs,
            description="The full text of one corpus document, by the doc_id a search returned.",
            metadata={"progress": "Reading document {doc_id}..."},
        ),
    ]
