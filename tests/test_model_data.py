"""The model's shared facts: one weight-sharding helper that memory, the engine's GEMMs and
the placement's op costs all read, and the runtime figures (runtime.yaml) that reach the
engine through the Context instead of living in code."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import yaml

from dse.catalog import runtime as rt
from dse.catalog.models import get_model
from dse.deploy.opcost import op_costs, parse_pool
from dse.deploy.spec_table import SpecTable
from dse.errors import DSEError
from dse.model import memory, ops, sharding

MLA_MOE = "deepseek-ai/DeepSeek-V3"
DENSE = "Qwen/Qwen3-8B"


def _hw(runtime: dict | None = None, n: int = 1):
    cols = SpecTable([("h100_sxm", "bf16")]).gather(np.zeros(n, dtype=int))
    return SpecTable.hw(cols, runtime=rt.runtime() if runtime is None else runtime)


@pytest.mark.parametrize("model_id,tp", [(DENSE, 4.0), (MLA_MOE, 8.0)])
def test_attention_gemm_streams_the_sharded_weights(model_id, tp):
    """The attention projections' bytes at one token are its activations plus exactly the
    attention weights sharding assigns to one GPU (MLA: replicated down-projections)."""
    m = get_model(model_id)
    par = ops.Parallel(tp=np.full(1, tp), dp=np.ones(1), ep=np.ones(1), pp=np.ones(1))
    dt = ops.Dtypes(w_bytes=np.full(1, 2.0), a_bytes=np.full(1, 2.0), kv_bytes=np.full(1, 2.0))
    step = ops.forward(m, hw=_hw(), par=par, dt=dt, batch=np.ones(1), q_len=np.ones(1), ctx=np.full(1, 64.0))
    h = float(m.hidden)
    weights = sum(sharding.attn_params_per_gpu(m.hidden, g.attention, tp, count=g.count) for g in m.groups) * 2.0
    acts = sum(g.count * (h * 2.0 + sharding.attn_params_per_gpu(m.hidden, g.attention, tp) / h * 2.0)
               for g in m.groups)
    np.testing.assert_allclose(step.bytes["attn_proj"], weights + acts, rtol=1e-12)
    if model_id == MLA_MOE:   # the low-rank parts do not shrink with TP
        a = m.groups[0].attention
        assert sharding.attn_params_per_gpu(m.hidden, a, 8.0) > a.params(m.hidden) / 8.0


def test_memory_and_op_costs_agree_with_sharding():
    """memory.weight_bytes_split and the placement's per-layer op memory are the helper's sums."""
    m = get_model(MLA_MOE)
    par = ops.Parallel(tp=np.array([8.0]), dp=np.array([2.0]), ep=np.array([16.0]), pp=np.ones(1))
    attn, ffn = memory.weight_bytes_split(m, par, 1.0)
    want_a = sum(sharding.attn_params_per_gpu(m.hidden, g.attention, 8.0, g.count) for g in m.groups)
    want_f = sum(sharding.ffn_params_per_gpu(m.hidden, g.ffn, 8.0, 16.0, g.count) for g in m.groups)
    np.testing.assert_allclose(attn, want_a + sharding.embedding_bytes_per_gpu(m, 8.0), rtol=1e-12)
    np.testing.assert_allclose(ffn, want_f, rtol=1e-12)
    # experts split over tp x dp, shared experts over tp, router replicated: by hand for one layer
    f = next(g.ffn for g in m.groups if g.ffn.kind == "moe")
    h = m.hidden
    routed = f.num_experts * f.mats * h * f.intermediate
    by_hand = routed / 16.0 + f.mats * h * f.shared_intermediate / 8.0 + h * f.num_experts
    assert sharding.ffn_params_per_gpu(h, f, 8.0, 16.0) == pytest.approx(by_hand, rel=1e-12)
    dense = get_model(DENSE)
    c = op_costs(dense, [parse_pool("h100_sxm:4,tp=4")], batch=1, weight_dtype="bf16")
    ffn_bytes = sharding.ffn_params_per_gpu(dense.hidden, dense.groups[0].ffn, 4.0, 4.0) * 2.0
    assert c.groups[0].mem_bytes["ffn"][0] == pytest.approx(ffn_bytes, rel=1e-12)
    assert c.embed_mem_bytes[0] == pytest.approx(dense.vocab * dense.hidden * 2.0 / 4.0, rel=1e-12)


def test_pipeline_hop_latency_comes_from_the_runtime():
    """ops.forward's pipeline hand-off pays runtime.yaml's p2p_hop_ms per stage boundary."""
    m = get_model(DENSE)
    m1 = dataclasses.replace(m, groups=(dataclasses.replace(m.groups[0], count=1),))
    par = ops.Parallel(tp=np.ones(1), dp=np.ones(1), ep=np.ones(1), pp=np.full(1, 3.0))
    dt = ops.Dtypes(w_bytes=np.full(1, 2.0), a_bytes=np.full(1, 2.0), kv_bytes=np.full(1, 2.0))
    kw = dict(par=par, dt=dt, batch=np.ones(1), q_len=np.ones(1), ctx=np.full(1, 64.0))
    base = ops.forward(m1, hw=_hw(), **kw).time_ms["pp_comm"]
    slow = ops.forward(m1, hw=_hw({**rt.runtime(), "p2p_hop_ms": 1.0}), **kw).time_ms["pp_comm"]
    np.testing.assert_allclose(slow - base, 2 * (1.0 - rt.runtime()["p2p_hop_ms"]), rtol=1e-9)
    assert rt.runtime()["p2p_hop_ms"] == 0.01 and rt.runtime()["kv_handoff_ms"] == 0.02


def test_placement_hop_uses_the_runtime_hop():
    m = get_model(DENSE)
    pools = [parse_pool("h100_sxm:2,tp=2"), parse_pool("h100_sxm:2,tp=2")]
    a = op_costs(m, pools, batch=4)
    b = op_costs(m, pools, batch=4, rt={**rt.runtime(), "p2p_hop_ms": 0.5})
    np.testing.assert_allclose(b.hop_ms - a.hop_ms, 0.5 - 0.01, rtol=1e-9)


def test_runtime_file_every_figure_sourced():
    doc = yaml.safe_load((rt.hardware_dir() / "runtime.yaml").read_text())
    limits = {"engine_limits", "engine_limits_sources"}
    assert set(rt.RUNTIME_KEYS) <= set(doc) and set(doc) - {"sources"} - limits == set(doc["sources"])
    assert all(str(v).strip() for v in doc["sources"].values())
    assert set(doc["engine_limits"]) == set(doc["engine_limits_sources"]) >= {"trtllm", "vllm", "sglang", "default"}
    assert all(str(v).strip() for v in doc["engine_limits_sources"].values())


@pytest.mark.parametrize("patch,match", [
    ({"p2p_hop_ms": "fast"}, r"runtime\.yaml: p2p_hop_ms: expected a non-negative number, got 'fast'"),
    ({"kv_handoff_ms": -1}, r"runtime\.yaml: kv_handoff_ms: expected a non-negative number, got -1"),
    ({"p2p_hop_ms": None}, r"runtime\.yaml: p2p_hop_ms: expected a non-negative number, got None"),
])
def test_bad_runtime_figure_is_one_line_error(patch, match):
    doc = {**yaml.safe_load((rt.hardware_dir() / "runtime.yaml").read_text()), **patch}
    with pytest.raises(DSEError, match=match):
        rt.parse_runtime(doc, where="runtime.yaml")


def test_runtime_figure_without_source_or_missing_is_an_error():
    doc = yaml.safe_load((rt.hardware_dir() / "runtime.yaml").read_text())
    unsourced = {**doc, "sources": {k: v for k, v in doc["sources"].items() if k != "p2p_hop_ms"}}
    with pytest.raises(DSEError, match=r"runtime\.yaml: sources\.p2p_hop_ms: missing"):
        rt.parse_runtime(unsourced, where="runtime.yaml")
    missing = {k: v for k, v in doc.items() if k != "kv_handoff_ms"}
    with pytest.raises(DSEError, match=r"runtime\.yaml: kv_handoff_ms: missing; required: "):
        rt.parse_runtime(missing, where="runtime.yaml")
