"""Decontamination against benchmark test sets: reject a question that shares a word n-gram
(default 13, the overlap measure of METHOD §4) with any benchmark question.

Sources (``SQ_DECONTAM_SOURCES``, comma-separated):

* a local file: ``.jsonl`` / ``.json`` (one record per line, or a list of records) or ``.parquet``;
* ``hf:<dataset>[:<config>][@<split>]``: a dataset loaded with ``datasets.load_dataset``
  (split defaults to ``test``; the library must be installed and the dataset reachable or cached);
* either may end with ``#<field>``, the record field that holds the question; otherwise
  ``SQ_DECONTAM_FIELD``, otherwise the first of ``question``, ``problem``, ``input`` present.

Text is compared as lowercase word tokens with typography folded and accents and punctuation
stripped (``[a-z0-9]+``), so LaTeX, Unicode math and spacing differences do not hide an overlap. A benchmark question shorter than ``n``
tokens (but at least :data:`MIN_SHORT_TOKENS`) is indexed whole: a question containing all of it
is contaminated too. N-grams are stored as 64-bit blake2b hashes.

The index is built once and shared through the object store under
``indexes/decontam/<hash of the source list, field and n>.json.gz``: every filter replica computes
the same key, loads the index when it is there and builds and stores it otherwise (replicas that
race write identical bytes, and stores write atomically). The key names the sources, not their
content: after changing a file in place, delete the stored index or rename the file.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from libs.errors import ConfigError
from libs.storage.objectstore import ObjectNotFound, ObjectStore
from services.filter.checks import normalize_typography

log = logging.getLogger("services.filter.decontam")

FORMAT = "scalequest-decontam/1"
INDEX_PREFIX = "indexes/decontam"
DEFAULT_FIELDS = ("question", "problem", "input")
MIN_SHORT_TOKENS = 8
_TOKEN = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> list[str]:
    """Lowercase word tokens, accents and punctuation stripped; math typography is folded first
    (× → times, π → pi), so a normalized question and a raw benchmark compare alike."""
    t = unicodedata.normalize("NFKD", normalize_typography(text).lower())
    t = "".join(ch for ch in t if not unicodedata.combining(ch))
    return _TOKEN.findall(t)


def _gram_hash(gram: list[str]) -> int:
    return int.from_bytes(hashlib.blake2b(" ".join(gram).encode(), digest_size=8).digest(), "little")


@dataclass(frozen=True)
class SourceSpec:
    """One benchmark: where it is and which field holds the question."""

    raw: str
    location: str
    field: str  # "" = guess
    is_hf: bool

    @property
    def name(self) -> str:
        return self.location if self.is_hf else Path(self.location).stem

    @classmethod
    def parse(cls, raw: str, default_field: str = "") -> SourceSpec:
        loc, _, fld = raw.partition("#")
        loc = loc.strip()
        if not loc:
            raise ConfigError(f"SQ_DECONTAM_SOURCES: empty source in {raw!r}")
        is_hf = loc.startswith("hf:")
        return cls(raw=raw, location=loc[3:] if is_hf else loc, field=fld.strip() or default_field, is_hf=is_hf)


def _pick(record: dict, spec: SourceSpec) -> str:
    if spec.field:
        if spec.field not in record:
            raise ConfigError(f"SQ_DECONTAM_SOURCES: {spec.raw}: records have no field {spec.field!r}")
        return str(record[spec.field] or "")
    for name in DEFAULT_FIELDS:
        if name in record:
            return str(record[name] or "")
    raise ConfigError(
        f"SQ_DECONTAM_SOURCES: {spec.raw}: none of the fields {', '.join(DEFAULT_FIELDS)} in its records "
        f"(fields: {', '.join(map(str, list(record)[:12]))}); name one with #<field> or SQ_DECONTAM_FIELD"
    )


def _records(spec: SourceSpec) -> Iterator[dict]:
    if spec.is_hf:
        try:
            import datasets
        except ImportError as e:
            raise ConfigError(f"SQ_DECONTAM_SOURCES: {spec.raw} needs the 'datasets' package") from e
        ds_id, _, split = spec.location.partition("@")
        ds_id, _, config = ds_id.partition(":")
        try:
            ds = datasets.load_dataset(ds_id, config or None, split=split or "test")
        except Exception as e:  # the library raises many types: missing, offline, bad config
            raise ConfigError(f"SQ_DECONTAM_SOURCES: cannot load {spec.raw}: {type(e).__name__}: {e}") from e
        yield from ds
        return
    path = Path(spec.location).expanduser()
    if not path.is_file():
        raise ConfigError(f"SQ_DECONTAM_SOURCES: {spec.raw}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from pq.read_table(path).to_pylist()
    elif suffix in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8")
        stripped = text.lstrip()
        if suffix == ".json" and stripped.startswith("["):
            yield from json.loads(text)
            return
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConfigError(f"SQ_DECONTAM_SOURCES: {spec.raw}: line {n} is not JSON: {e}") from e
    else:
        raise ConfigError(f"SQ_DECONTAM_SOURCES: {spec.raw}: use .jsonl, .json or .parquet (or hf:<dataset>)")


@dataclass
class Contamination:
    benchmark: str
    ngram: str


@dataclass
class DecontamIndex:
    """Sorted n-gram hashes of the benchmark questions, each with the benchmark it came from."""

    n: int
    sources: list[dict]
    hashes: np.ndarray  # uint64, sorted
    owners: np.ndarray  # uint16, index into sources
    short_lengths: list[int] = field(default_factory=list)

    @classmethod
    def build(cls, specs: list[SourceSpec], n: int) -> DecontamIndex:
        grams: dict[int, int] = {}
        short: set[int] = set()
        sources = []
        for si, spec in enumerate(specs):
            items = count = 0
            for record in _records(spec):
                toks = tokens(_pick(record, spec))
                items += 1
                if len(toks) >= n:
                    for i in range(len(toks) - n + 1):
                        grams.setdefault(_gram_hash(toks[i : i + n]), si)
                        count += 1
                elif len(toks) >= min(MIN_SHORT_TOKENS, n):
                    grams.setdefault(_gram_hash(toks), si)
                    short.add(len(toks))
                    count += 1
            if items == 0:
                raise ConfigError(f"SQ_DECONTAM_SOURCES: {spec.raw} has no records")
            sources.append({"name": spec.name, "source": spec.raw, "items": items, "ngrams": count})
        keys = np.fromiter(grams.keys(), dtype=np.uint64, count=len(grams))
        vals = np.fromiter(grams.values(), dtype=np.uint16, count=len(grams))
        order = np.argsort(keys)
        return cls(n=n, sources=sources, hashes=keys[order], owners=vals[order], short_lengths=sorted(short))

    def check(self, text: str) -> Contamination | None:
        """The first benchmark n-gram (or whole short benchmark question) found in ``text``."""
        toks = tokens(text)
        for length in [self.n, *self.short_lengths]:
            if len(toks) < length or len(self.hashes) == 0:
                continue
            starts = range(len(toks) - length + 1)
            q = np.array([_gram_hash(toks[i : i + length]) for i in starts], dtype=np.uint64)
            pos = np.minimum(np.searchsorted(self.hashes, q), len(self.hashes) - 1)
            hit = np.nonzero(self.hashes[pos] == q)[0]
            if len(hit):
                i = int(hit[0])
                owner = self.sources[int(self.owners[pos[i]])]["name"]
                return Contamination(owner, " ".join(toks[i : i + length]))
        return None

    def to_bytes(self) -> bytes:
        doc = {
            "format": FORMAT,
            "n": self.n,
            "sources": self.sources,
            "short_lengths": self.short_lengths,
            "hashes": base64.b64encode(self.hashes.astype("<u8").tobytes()).decode(),
            "owners": base64.b64encode(self.owners.astype("<u2").tobytes()).decode(),
        }
        return gzip.compress(json.dumps(doc, separators=(",", ":")).encode(), mtime=0)

    @classmethod
    def from_bytes(cls, data: bytes) -> DecontamIndex:
        doc = json.loads(gzip.decompress(data))
        if doc.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} index: {doc.get('format')!r}")
        return cls(
            n=int(doc["n"]),
            sources=doc["sources"],
            hashes=np.frombuffer(base64.b64decode(doc["hashes"]), dtype="<u8").astype(np.uint64),
            owners=np.frombuffer(base64.b64decode(doc["owners"]), dtype="<u2").astype(np.uint16),
            short_lengths=[int(x) for x in doc.get("short_lengths", [])],
        )


def parse_sources(sources: list[str], default_field: str = "") -> list[SourceSpec]:
    specs = [SourceSpec.parse(s, default_field) for s in sources]
    if len(specs) > np.iinfo(np.uint16).max:
        raise ConfigError("SQ_DECONTAM_SOURCES: too many sources")
    return specs


def index_key(specs: list[SourceSpec], n: int) -> str:
    ident = json.dumps({"format": FORMAT, "n": n, "sources": [[s.raw, s.field] for s in specs]}, sort_keys=True)
    return f"{INDEX_PREFIX}/{hashlib.sha256(ident.encode()).hexdigest()[:24]}.json.gz"


def load_or_build(store: ObjectStore, sources: list[str], n: int, default_field: str = "") -> DecontamIndex:
    """The shared index for these sources: loaded from ``store``, or built and stored there.

    Blocking (file and store I/O); call it through ``asyncio.to_thread`` from async code."""
    specs = parse_sources(sources, default_field)
    key = index_key(specs, n)
    try:
        data: bytes | None = store.get_bytes(key)
    except ObjectNotFound:
        data = None
    if data is not None:
        try:
            index = DecontamIndex.from_bytes(data)
            log.info("decontamination index %s loaded: %d n-grams of %s", key, len(index.hashes),
                     ", ".join(s["name"] for s in index.sources))  # fmt: skip
            return index
        except (ValueError, OSError, KeyError, TypeError) as e:  # truncated gzip, bad JSON, old format
            log.warning("decontamination index %s is unreadable (%s); rebuilding it", key, e)
    index = DecontamIndex.build(specs, n)
    store.put_bytes(key, index.to_bytes(), content_type="application/gzip")
    log.info("decontamination index %s built: %d n-grams of %s", key, len(index.hashes),
             ", ".join(f"{s['name']} ({s['items']} questions)" for s in index.sources))  # fmt: skip
    return index
