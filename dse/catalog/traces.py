"""Request traces with prefix reuse: the Mooncake JSONL format, its reuse pairs, and an exact
LRU simulation of a prefix cache (the check of dse.model.kvcache's analytic hit rate).

Format (github.com/kvcache-ai/Mooncake FAST25-release/README.md): one JSON object per line,
`timestamp` (ms since the first request), `input_length`, `output_length` (tokens) and
`hash_ids`, the prompt's 512-token blocks as remapped prefix hashes (equal ids = the same
reusable prefix block); `session_id` (the aiperf multi-turn variant) is accepted and unused.
"""
from __future__ import annotations

import dataclasses
import functools
import heapq
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np

from dse.errors import DSEError

__all__ = ["BLOCK_TOKENS", "Trace", "read_trace", "reuse_cdf", "lru_hit_rate", "session_trace", "MAX_TRACE_BYTES"]

BLOCK_TOKENS = 512          # Mooncake FAST25-release/README.md: "The block size is 512 tokens"
MAX_TRACE_BYTES = 64_000_000


@dataclasses.dataclass(frozen=True)
class Trace:
    """Requests in arrival order: their lengths and prompt blocks (ids, tokens per block)."""
    path: str
    timestamp_ms: np.ndarray
    input_length: np.ndarray
    output_length: np.ndarray
    blocks: tuple               # per request: tuple of block ids
    block_tokens: tuple         # per request: tuple of tokens per block

    @property
    def requests(self) -> int:
        return len(self.blocks)


def _field(row: dict, key: str, where: str, *, low: int, kind=int):
    if key not in row:
        raise DSEError(f"{where}: missing {key!r} (expected timestamp, input_length, output_length, hash_ids)")
    v = row[key]
    if isinstance(v, bool) or not isinstance(v, (int, float) if kind is float else int) or v < low:
        what = "a number" if kind is float else "a whole number"
        raise DSEError(f"{where}: {key}: expected {what} >= {low}, got {str(v)[:40]}")
    return v


def _row(line: str, where: str) -> tuple:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DSEError(f"{where}: not a JSON object ({exc.msg})") from None
    if not isinstance(row, dict):
        raise DSEError(f"{where}: expected a JSON object, got {type(row).__name__}")
    ts = _field(row, "timestamp", where, low=0, kind=float)
    isl = _field(row, "input_length", where, low=1)
    osl = _field(row, "output_length", where, low=0)
    if "hash_ids" not in row:
        raise DSEError(f"{where}: missing 'hash_ids' (expected timestamp, input_length, output_length, hash_ids)")
    ids = row["hash_ids"]
    if not isinstance(ids, list) or not all(isinstance(h, int) and not isinstance(h, bool) for h in ids):
        raise DSEError(f"{where}: hash_ids: expected a list of integers, got {str(ids)[:40]}")
    if len(ids) > -(-isl // BLOCK_TOKENS):
        raise DSEError(f"{where}: hash_ids: {len(ids)} blocks of {BLOCK_TOKENS} tokens exceed input_length {isl}")
    sizes = [BLOCK_TOKENS] * len(ids)
    if ids:
        sizes[-1] = isl - BLOCK_TOKENS * (len(ids) - 1)
    return float(ts), isl, osl, tuple(ids), tuple(sizes)


@functools.lru_cache(maxsize=16)
def read_trace(path: str) -> Trace:
    """The trace at `path` (checked line by line; every error one line naming file and line)."""
    p = Path(path)
    if not p.is_file():
        raise DSEError(f"{path}: trace file not found")
    if p.stat().st_size > MAX_TRACE_BYTES:
        raise DSEError(f"{path}: trace larger than {MAX_TRACE_BYTES:,} bytes")
    rows = []
    with p.open(encoding="utf-8", errors="strict") as fh:
        try:
            for i, line in enumerate(fh, start=1):
                if line.strip():
                    rows.append(_row(line, f"{path}: line {i}"))
        except UnicodeDecodeError:
            raise DSEError(f"{path}: not UTF-8 text (expected JSON lines)") from None
    if not rows:
        raise DSEError(f"{path}: no requests (expected one JSON object per line)")
    order = sorted(range(len(rows)), key=lambda i: rows[i][0])      # stable: ties keep file order
    rows = [rows[i] for i in order]
    ts, isl, osl, blocks, sizes = zip(*rows)
    return Trace(path=str(p), timestamp_ms=np.array(ts), input_length=np.array(isl, dtype=float),
                 output_length=np.array(osl, dtype=float), blocks=blocks, block_tokens=sizes)


def reuse_cdf(trace: Trace, grid: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(tokens per request reused within grid[k] requests of their previous access, prompt
    tokens per request, the same accessed): the trace's reuse pairs on a gap grid."""
    last: dict[int, int] = {}
    gaps, toks = [], []
    for i, (ids, sizes) in enumerate(zip(trace.blocks, trace.block_tokens)):
        for h, s in zip(ids, sizes):
            j = last.get(h)
            if j is not None:
                gaps.append(i - j)
                toks.append(s)
            last[h] = i
    n = trace.requests
    gaps_a, toks_a = np.array(gaps, dtype=float), np.array(toks, dtype=float)
    order = np.argsort(gaps_a)
    cum = np.concatenate([[0.0], np.cumsum(toks_a[order])])
    idx = np.searchsorted(gaps_a[order], grid, side="right")
    prompt = float(trace.input_length.mean())
    return cum[idx] / n, prompt, prompt


def lru_hit_rate(trace: Trace, capacity_tokens: float) -> float:
    """Share of prompt tokens an LRU prefix cache of `capacity_tokens` serves (exact replay).

    A request hits the longest cached prefix of its blocks, then touches all of them, the
    first block last (so a prefix's tail is evicted before its head, as vLLM's free-block
    queue does), and evicts least-recently-used blocks beyond the capacity."""
    cache: OrderedDict[int, int] = OrderedDict()
    used = 0
    hit = 0
    for ids, sizes in zip(trace.blocks, trace.block_tokens):
        prefix = True
        for h, s in zip(ids, sizes):
            if prefix and h in cache:
                hit += s
            else:
                prefix = False
        for h, s in zip(reversed(ids), reversed(sizes)):
            if h in cache:
                cache.move_to_end(h)
            else:
                cache[h] = s
                used += s
        while used > capacity_tokens and cache:
            _, s = cache.popitem(last=False)
            used -= s
    return hit / float(trace.input_length.sum())


def session_trace(*, users: int, turns: int, isl: float, system: int, think_over_life: float, requests: int,
                  seed: int = 0) -> Trace:
    """A synthetic closed loop of multi-turn sessions in Trace form (for checking the analytic
    session profile against an exact replay): `users` users, each request lasting one time
    unit and followed by Exp(think_over_life) of think time; a user's next request is the
    next turn of its session (a new session after `turns`). Every prompt starts with the
    shared `system` tokens; turn t holds t x g session tokens, g = 2 (isl - system) / (turns + 1)."""
    rng = np.random.default_rng(seed)
    grow = 2.0 * (isl - system) / (turns + 1)
    sys_ids = tuple(range(system // -BLOCK_TOKENS, 0))       # -ceil(system / block) .. -1
    sys_sizes = [BLOCK_TOKENS] * len(sys_ids)
    if sys_ids:
        sys_sizes[-1] = system - BLOCK_TOKENS * (len(sys_ids) - 1)
    fresh = iter(range(1, 1 << 62))
    events = [(float(rng.exponential(1.0 + think_over_life)), u) for u in range(users)]
    heapq.heapify(events)
    state: dict[int, tuple[int, list]] = {}
    blocks, sizes, lengths = [], [], []
    while len(blocks) < requests:
        t, u = heapq.heappop(events)
        turn, ids = state.get(u, (turns, []))
        turn, ids = (1, []) if turn >= turns else (turn + 1, ids)
        tokens = int(round(turn * grow))
        need = -(-tokens // BLOCK_TOKENS)
        ids = ids + [next(fresh) for _ in range(need - len(ids))]
        own = [BLOCK_TOKENS] * need
        own[-1] = tokens - BLOCK_TOKENS * (need - 1)
        blocks.append(sys_ids + tuple(ids))
        sizes.append(tuple(sys_sizes) + tuple(own))
        lengths.append(system + tokens)
        state[u] = (turn, ids[:tokens // BLOCK_TOKENS])     # a partial last block changes with the answer
        heapq.heappush(events, (t + 1.0 + float(rng.exponential(think_over_life)), u))
    n = len(blocks)
    return Trace(path="synthetic sessions", timestamp_ms=np.arange(n, dtype=float),
                 input_length=np.array(lengths, dtype=float), output_length=np.zeros(n), blocks=tuple(blocks),
                 block_tokens=tuple(sizes))
