"""Exhaustive sweep: the space in index-range chunks, in-process, on joblib workers or on Dask.

The ground truth for small and medium spaces. The chunks range over the deployable rows
(dse.search.deployable: structure and GPU budget applied while enumerating), so rows the
engine could only reject are never evaluated. Memory is bounded by the chunk size
and the number of chunks in flight, whatever the size of the space; each finished chunk
becomes a part file named by its index range, so a rerun into the same directory
evaluates only the chunks that are missing. Chunks are pure functions of their range, and
the final results read the parts in range order, so a resumed grid is bit-for-bit the
uninterrupted one; a part whose footer is unreadable or whose row count is wrong (a
damaged disk) is discarded and recomputed.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import pandas as pd

from dse.deploy.evaluate import space_memo
from dse.errors import DSEError
from dse.search.evaluation import evaluate_chunk
from dse.search.progress import Progress, ProgressArg
from dse.search.space import Space
from dse.search.store import RunStore

__all__ = ["run_grid", "DEFAULT_CHUNK", "BACKENDS"]

DEFAULT_CHUNK = 65_536   # two engine chunks (CHUNK_ROWS): a grid chunk splits into whole ones


def _part_name(lo: int, hi: int) -> str:
    return f"grid-{lo:015d}-{hi:015d}"


def _done_ranges(store: RunStore, chunks: list[tuple[int, int]]) -> set[tuple[int, int]]:
    """The chunks whose part is whole; parts of other chunkings or damaged ones are removed."""
    wanted, out = set(chunks), set()
    for p in store.parts():
        try:
            _, lo, hi = p.stem.split("-")
            rng = (int(lo), int(hi))
        except ValueError:
            rng = (-1, -1)
        if rng not in wanted:
            store.remove_parts([p])
            continue
        rows = store.part_rows(p)
        if rows is None:
            continue
        if rows != rng[1] - rng[0]:
            store.discard_part(p, ValueError(f"{rows} rows, expected {rng[1] - rng[0]}"))
            continue
        out.add(rng)
    return out


Chunks = Iterator[tuple[int, int, pd.DataFrame, float]]


def _local(space: Space, todo: list[tuple[int, int]], jobs: int, scheduler: str | None) -> Chunks:
    for lo, hi in todo:
        yield evaluate_chunk(space, lo, hi)


def _joblib(space: Space, todo: list[tuple[int, int]], jobs: int, scheduler: str | None) -> Chunks:
    if jobs == 1 or len(todo) <= 1:
        yield from _local(space, todo, jobs, scheduler)
        return
    from joblib import Parallel, delayed

    parallel = Parallel(n_jobs=jobs, return_as="generator_unordered", pre_dispatch="2*n_jobs")
    yield from parallel(delayed(evaluate_chunk)(space, lo, hi) for lo, hi in todo)


def _dask(space: Space, todo: list[tuple[int, int]], jobs: int, scheduler: str | None) -> Chunks:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise DSEError("--backend dask needs the 'distributed' package: pip install 'dse[dask]'") from None
    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise DSEError(f"--scheduler: cannot reach Dask scheduler {scheduler!r} ({exc})") from None
    else:
        cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    try:
        workers = max(len(client.scheduler_info().get("workers", {})), 1)
        window = 2 * workers
        space_f = client.scatter(space, broadcast=True)
        pending = list(todo)
        running = as_completed()
        for _ in range(min(window, len(pending))):
            lo, hi = pending.pop(0)
            running.add(client.submit(evaluate_chunk, space_f, lo, hi, pure=False))
        for fut in running:
            result = fut.result()
            fut.release()
            if pending:
                lo, hi = pending.pop(0)
                running.add(client.submit(evaluate_chunk, space_f, lo, hi, pure=False))
            yield result
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


BACKENDS: dict[str, Callable[[Space, list[tuple[int, int]], int, str | None], Chunks]] = {
    "joblib": _joblib, "dask": _dask}


class _PartWriter:
    """Writes each chunk's part on one thread while the next chunk evaluates (Parquet's
    encoder releases the GIL), at most one part in flight: a failed write raises at the
    next write or at wait(), as it would have inline; a part is on disk (whole, by
    io.atomic_write) or not at all, as before."""

    def __init__(self, store: RunStore):
        self.store, self.pool, self.pending = store, ThreadPoolExecutor(max_workers=1), None

    def write(self, name: str, df: pd.DataFrame) -> None:
        self.wait()
        self.pending = self.pool.submit(self.store.write_part, name, df)

    def wait(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Let a part in flight finish (an error is already raising) and stop the thread."""
        self.pool.shutdown(wait=True)


def run_grid(space: Space, store: RunStore, *, chunk_size: int = DEFAULT_CHUNK, jobs: int = 1,
             backend: str = "joblib", scheduler: str | None = None, progress: ProgressArg = False) -> dict[str, Any]:
    """Evaluate every configuration not yet in the store; returns counters for run.json."""
    if backend not in BACKENDS:
        raise DSEError(f"--backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    chunks = list(space.chunks(chunk_size))
    done = _done_ranges(store, chunks)
    todo = [c for c in chunks if c not in done]
    n_done = sum(hi - lo for lo, hi in chunks if (lo, hi) in done)
    bar = Progress(space.deployable_size, "grid", progress, start=n_done)
    t0 = time.perf_counter()
    model_seconds = 0.0
    results = BACKENDS[backend](space, todo, jobs, scheduler)
    writer = _PartWriter(store)
    try:
        # chunks evaluated in this process share the steps priced once per distinct row (a
        # disagg space's pools recur in every chunk); workers in other processes do not
        with space_memo():
            for lo, hi, df, secs in results:
                writer.write(_part_name(lo, hi), df)
                model_seconds += secs
                n_done += hi - lo
                bar.update(n_done)
        writer.wait()
    finally:
        writer.close()
        close = getattr(results, "close", None)
        if close is not None:
            close()
        bar.close()
    return {"n_evaluated": space.deployable_size, "eval_seconds": time.perf_counter() - t0,
            "settings": {"chunk_size": chunk_size, "jobs": jobs, "backend": backend, "scheduler": scheduler,
                         "model_seconds": round(model_seconds, 4), "chunks_resumed": len(chunks) - len(todo)}}
