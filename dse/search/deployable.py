"""Constraint-aware enumeration: the configurations of a space that can be deployed at all.

Why: a scenario is a product of axes, and under a GPU budget most of a product is layouts
that use another number of GPUs, or that the model cannot be sharded into; evaluating them
only to reject them made the sweep slow. Per mode, each serving pool is checked once over
the product of the few axes it reads (dse.deploy.structure, the engine's own checks), the
pools' verdicts and GPU counts are broadcast over the structural axes, and the budget
(`constraints.gpus`: exactly N GPUs, replicas included; `constraints.max_gpus`: at most M)
is applied there. What remains is a sorted list of structural offsets; every other axis
stays a free mixed-radix factor, so position p of a mode is offset[p // F] + the free
digits of p % F: config ids stay those of the full product, and a grid evaluates
deployable rows only.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from dse.errors import DSEError

__all__ = ["ModeEnum", "enumerate_mode", "MAX_STRUCTURE_CELLS"]

# structural combinations held at once per mode (a few int32 digit columns and their GPUs):
# beyond this the mode is not pruned (every row evaluated, the budget applied after evaluation)
MAX_STRUCTURE_CELLS = 20_000_000


@dataclasses.dataclass(frozen=True)
class ModeEnum:
    """The deployable rows of one mode: `offsets` (ascending local offsets of the deployable
    structural combinations; None = every combination) x the free axes (size, stride)."""
    offsets: np.ndarray | None
    free: tuple[tuple[int, int], ...]
    raw: int

    @property
    def free_size(self) -> int:
        return int(np.prod([s for s, _ in self.free], dtype=object)) if self.free else 1

    @property
    def size(self) -> int:
        return self.raw if self.offsets is None else len(self.offsets) * self.free_size

    def local(self, pos: np.ndarray) -> np.ndarray:
        """Local (in-mode) indices of deployable positions."""
        if self.offsets is None:
            return pos
        f = self.free_size
        out = self.offsets[pos // f]
        rest = pos % f
        for size, stride in reversed(self.free):
            out = out + (rest % size) * stride
            rest //= size
        return out

    def structural(self, local: np.ndarray, s_axes: tuple[tuple[int, int], ...]) -> np.ndarray:
        """The structural offset of local indices (their free digits zeroed)."""
        out = np.zeros_like(local)
        for size, stride in s_axes:
            out += (local // stride) % size * stride
        return out


def enumerate_mode(mode, fixed: dict[str, Any], model_id: str, eplb_experts: int, exact: int | None,
                   at_most: int | None, where: str) -> tuple[ModeEnum, tuple[tuple[int, int], ...]]:
    """The deployable rows of `mode` (a dse.search.encoding.Mode) and its structural axes
    (size, stride), by the engine's structure checks and the GPU budget.

    The structural product is never built whole: a table of the combinations kept so far
    grows pool by pool by the axes that pool adds, and loses at once the rows that pool
    rejects or that already exceed the budget (GPUs only add up, and replicas multiply),
    so it stays far below the product (the 16-GPU MoE disagg question: 4M structural
    cells, at most 246k rows held, 1,176 kept)."""
    from dse.catalog.models import get_model
    from dse.deploy.structure import STRUCTURE_COLUMNS

    s_idx = [j for j, a in enumerate(mode.axes) if a.name in STRUCTURE_COLUMNS]
    free = tuple((mode.axes[j].size, mode.strides[j]) for j in range(len(mode.axes)) if j not in s_idx)
    s_axes = tuple((mode.axes[j].size, mode.strides[j]) for j in s_idx)
    model = get_model(model_id)
    names = [mode.axes[j].name for j in s_idx]
    base = {**fixed, "mode": mode.name}
    if "device" not in base:
        base["device"] = next(a.values[0] for a in mode.axes if a.name == "device")
    try:
        offsets = _kept(mode, s_idx, names, model, base, eplb_experts, exact, at_most, where)
    except _TooLarge:
        return ModeEnum(None, free, mode.size), s_axes
    return ModeEnum(offsets, free, mode.size), s_axes


def _kept(mode, s_idx, names, model, base, eplb_experts, exact, at_most, where) -> np.ndarray:
    """The sorted structural offsets of the deployable combinations (see enumerate_mode)."""
    from dse.deploy.structure import POOLS

    sizes = [mode.axes[j].size for j in s_idx]
    s_axes = [(mode.axes[j].size, mode.strides[j]) for j in s_idx]
    bound = exact if exact is not None else at_most
    table = _Table(len(names))
    for pool in POOLS[mode.name]:
        dims = [d for d, n in enumerate(names) if n in pool.reads]
        copies = names.index(pool.copies) if pool.copies in names else None
        table.expand([*dims, *([copies] if copies is not None else [])], sizes)
        p_ok, p_gpus = _pool_grid(model, mode, s_idx, dims, base, eplb_experts, pool.name, where)
        flat = np.ravel_multi_index([table.digits[d] for d in dims], [sizes[d] for d in dims]) if dims else 0
        g = np.broadcast_to(p_gpus[flat], (table.n,)) * _count(mode, s_idx, names, pool.copies, base, table)
        table.gpus = table.gpus + g
        table.keep(np.broadcast_to(p_ok[flat], (table.n,)) & (table.gpus <= (bound if bound else np.inf)))
    rep = names.index("replicas") if "replicas" in names else None
    if rep is not None:
        table.expand([rep], sizes)
    total = table.gpus * _count(mode, s_idx, names, "replicas", base, table)
    if exact is not None:
        table.keep(total == exact)
    elif at_most is not None:
        table.keep(total <= at_most)
    table.expand(list(range(len(names))), sizes)      # structural axes no pool reads: every value
    offsets = np.zeros(table.n, dtype=np.int64)
    for d, (_, stride) in enumerate(s_axes):
        offsets += table.digits[d].astype(np.int64) * stride
    return np.sort(offsets)


class _Table:
    """Structural combinations kept so far: a digit column per covered axis, their GPUs."""

    def __init__(self, ndim: int) -> None:
        self.digits: list[np.ndarray | None] = [None] * ndim
        self.n = 1
        self.gpus = np.zeros(1)

    def expand(self, dims: list[int], sizes: list[int]) -> None:
        """Every kept row times every value of the axes in `dims` not covered yet."""
        new = [d for d in dict.fromkeys(dims) if self.digits[d] is None]
        if not new:
            return
        shape = [sizes[d] for d in new]
        m = int(np.prod(shape))
        if self.n * m > MAX_STRUCTURE_CELLS:
            raise _TooLarge()
        grid = np.unravel_index(np.arange(m), shape)
        for d in range(len(self.digits)):
            if self.digits[d] is not None:
                self.digits[d] = np.repeat(self.digits[d], m)
        for d, g in zip(new, grid):
            self.digits[d] = np.tile(g.astype(np.int32), self.n)
        self.gpus = np.repeat(self.gpus, m)
        self.n *= m

    def keep(self, mask: np.ndarray) -> None:
        self.digits = [None if c is None else c[mask] for c in self.digits]
        self.gpus = self.gpus[mask]
        self.n = int(self.gpus.size)


class _TooLarge(Exception):
    """The kept combinations would outgrow MAX_STRUCTURE_CELLS: the mode is not pruned."""


def _count(mode, s_idx: list[int], names: list[str], col: str, base: dict, table: _Table) -> np.ndarray | float:
    """A count column (workers, replicas) per kept row, or its fixed value ("" = one)."""
    if not col:
        return 1.0
    if col in names:
        d = names.index(col)
        return np.asarray(mode.axes[s_idx[d]].values, dtype=float)[table.digits[d]]
    from dse.schema import COLUMNS
    return float(base.get(col, COLUMNS[col]))


def _pool_grid(model, mode, s_idx: list[int], dims: list[int], base: dict, eplb_experts: int, pool: str,
               where: str) -> tuple[np.ndarray, np.ndarray]:
    """One pool's (deployable, GPUs) over the product of the structural axes it reads
    (flat, C order of `dims`)."""
    from dse.deploy.columns import broadcast, code_of
    from dse.deploy.structure import pool_check

    axes = [mode.axes[s_idx[d]] for d in dims]
    grids = np.meshgrid(*[np.arange(a.size) for a in axes], indexing="ij") if axes else []
    cols = dict(base)
    for a, g in zip(axes, grids):
        cols[a.name] = a.array()[g.reshape(-1)]
    if eplb_experts:
        from dse.deploy.roles import fewest_redundant
        cols.update(fewest_redundant(cols, eplb_experts))
    try:
        c, n, vocab = broadcast(cols)
    except DSEError as exc:
        raise DSEError(f"{where}: modes.{mode.name}: {exc}") from None
    c = {k: np.broadcast_to(v, (n,)) for k, v in c.items()}
    ok, gpus = pool_check(model, c, vocab, mode.name, pool, code_of(vocab, "device", ""))
    return np.asarray(ok, dtype=bool).reshape(-1), np.asarray(gpus, dtype=float).reshape(-1)
