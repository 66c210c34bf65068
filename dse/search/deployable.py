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

# structural combinations held at once per mode (bools and a few float grids): beyond this
# the mode is not pruned (every row evaluated, the budget applied after evaluation)
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
    (size, stride), by the engine's structure checks and the GPU budget."""
    from dse.catalog.models import get_model
    from dse.deploy.structure import POOLS, STRUCTURE_COLUMNS

    s_idx = [j for j, a in enumerate(mode.axes) if a.name in STRUCTURE_COLUMNS]
    free = tuple((mode.axes[j].size, mode.strides[j]) for j in range(len(mode.axes)) if j not in s_idx)
    s_axes = tuple((mode.axes[j].size, mode.strides[j]) for j in s_idx)
    shape = tuple(mode.axes[j].size for j in s_idx)
    cells = int(np.prod(shape, dtype=object)) if shape else 1
    if cells > MAX_STRUCTURE_CELLS:
        return ModeEnum(None, free, mode.size), s_axes
    model = get_model(model_id)
    names = [mode.axes[j].name for j in s_idx]
    base = {**fixed, "mode": mode.name}
    if "device" not in base:
        base["device"] = next(a.values[0] for a in mode.axes if a.name == "device")
    ok = np.ones(shape, dtype=bool)
    gpus = np.zeros(shape)
    for pool in POOLS[mode.name]:
        dims = [d for d, n in enumerate(names) if n in pool.reads]
        p_ok, p_gpus = _pool_grid(model, mode, s_idx, dims, base, eplb_experts, pool.name, where)
        ok &= p_ok
        gpus = gpus + p_gpus * _column_grid(mode, s_idx, names, pool.copies, base) if pool.copies else gpus + p_gpus
    gpus = gpus * _column_grid(mode, s_idx, names, "replicas", base)
    if exact is not None:
        ok &= gpus == exact
    if at_most is not None:
        ok &= gpus <= at_most
    flat = np.flatnonzero(ok.reshape(-1))
    offsets = np.zeros(flat.size, dtype=np.int64)
    if shape:
        for digits, (_, stride) in zip(np.unravel_index(flat, shape), s_axes):
            offsets += digits.astype(np.int64) * stride
    return ModeEnum(np.sort(offsets), free, mode.size), s_axes


def _expand(values: np.ndarray, dims: list[int], ndim: int) -> np.ndarray:
    """A grid over `dims` of the structural axes, shaped to broadcast over all of them."""
    shape = [1] * ndim
    for d, size in zip(dims, values.shape):
        shape[d] = size
    return values.reshape(shape)


def _column_grid(mode, s_idx: list[int], names: list[str], col: str, base: dict) -> np.ndarray | float:
    """A count column (workers, replicas) over the structural axes, or its fixed value."""
    if col in names:
        d = names.index(col)
        return _expand(np.asarray(mode.axes[s_idx[d]].values, dtype=float), [d], len(names))
    from dse.schema import COLUMNS
    return float(base.get(col, COLUMNS[col]))


def _pool_grid(model, mode, s_idx: list[int], dims: list[int], base: dict, eplb_experts: int, pool: str,
               where: str) -> tuple[np.ndarray, np.ndarray]:
    """One pool's (deployable, GPUs) over the product of the structural axes it reads."""
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
    shape = tuple(a.size for a in axes)
    return (_expand(ok.reshape(shape), dims, len(s_idx)),
            _expand(np.asarray(gpus, dtype=float).reshape(shape), dims, len(s_idx)))
