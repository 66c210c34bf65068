"""Wide expert parallelism with redundant experts (EPLB): the layout that divides, the
memory the replicas cost, the balance they buy under routing skew, the search key that
fills them, and the engines' flags for them."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dse import api
from dse.catalog.devices import get_device
from dse.catalog.models import get_model
from dse.catalog.systems import get_system
from dse.cli import main
from dse.deploy.roles import fewest_redundant
from dse.errors import DSEError
from dse.launch import engines, plan
from dse.launch.plan import Pool, _layout_flags
from dse.model import kernels as K
from dse.model import memory
from dse.model.ops import Parallel
from dse.search.evaluation import evaluate_batch
from dse.search.space import space_from_dict

DSV3 = "deepseek-v3"
# one NVL72 rack, attention data parallel over all 72 GPUs, experts over all 72
NVL72 = dict(model=DSV3, device="gb200", tp=1, dp=72, ep=72, batch_size=512, weight_dtype="fp8", kv_dtype="fp8",
             routing_skew=1.2)


def _one(**cols):
    return api.evaluate(strict=False, **cols).iloc[0]


def test_the_gb200_domain_holds_72_gpus():
    assert get_system(get_device("gb200").system).scaleup_domain == 72
    assert max(g.ffn.num_experts for g in get_model(DSV3).groups) == 256


def test_256_experts_over_72_ranks_need_32_redundant():
    """256 % 72 = 40: ep 72 divides 256 + 32 = 288 (4 experts per GPU), not 256 or 256 + 40 = 296."""
    plain, eplb, off = (_one(**NVL72, redundant_experts=r) for r in (0, 32, 40))
    assert not plain.feasible and plain.infeasible_reason == "ep must divide the 256 experts and tp*dp"
    assert eplb.feasible, eplb.infeasible_reason
    assert not off.feasible and "256 experts + redundant_experts" in off.infeasible_reason
    with pytest.raises(DSEError, match="ep must divide the 256 experts"):
        api.evaluate(**NVL72)                     # strict: the plain layout cannot exist


def test_replicas_are_bounded_and_need_moe_and_ep():
    assert "must not exceed the 256 experts" in _one(**{**NVL72, "dp": 8, "ep": 8}, redundant_experts=264) \
        .infeasible_reason
    assert "needs ep > 1" in _one(**{**NVL72, "dp": 8, "ep": 1}, redundant_experts=8).infeasible_reason
    dense = _one(model="Qwen/Qwen3-32B", device="h100_sxm", redundant_experts=8)
    assert dense.infeasible_reason == "redundant_experts needs a MoE model"
    with pytest.raises(DSEError, match=r"redundant_experts must hold whole numbers >= 0"):
        api.evaluate(**NVL72, redundant_experts=-1)


def test_memory_grows_by_r_over_ep_experts_per_gpu_exactly():
    model = get_model(DSV3)
    w_bytes, r = 1.0, 32.0
    par = lambda red: Parallel(tp=np.ones(1), dp=np.full(1, 72.0), ep=np.full(1, 72.0), pp=np.ones(1), redundant=red)
    grow = memory.weight_bytes_per_gpu(model, par(r), w_bytes) - memory.weight_bytes_per_gpu(model, par(0.0), w_bytes)
    expert = sum(g.count * g.ffn.mats * model.hidden * g.ffn.intermediate for g in model.groups if g.ffn.kind == "moe")
    assert grow[0] == pytest.approx(r / 72 * expert * w_bytes, rel=1e-12)      # 32/72 of an expert per MoE layer
    # the engine's memory column moves by exactly those bytes (the KV the batch uses is unchanged)
    # (ep 8 over tp x dp = 72: each rank's 36 experts are sliced over 9 GPUs, so again 32/72)
    # (bf16 weights: the checkpoint's block-scaled fp8 cannot be sliced 2048 / 9 wide)
    wide = {**NVL72, "ep": 8, "weight_dtype": "bf16"}
    a, b = _one(**wide, redundant_experts=0), _one(**wide, redundant_experts=32)
    assert a.feasible and b.feasible
    assert (b.memory_gb_per_gpu - a.memory_gb_per_gpu) * 1e9 == pytest.approx(32 / 72 * expert * 2.0, rel=1e-9)


@pytest.mark.parametrize("tokens", [64, 4096])
@pytest.mark.parametrize("skew", [0.6, 1.2])
def test_imbalance_strictly_drops_with_replicas_under_skew(tokens, skew):
    rs = [0, 1, 8, 32, 64, 128, 256]
    imb = [float(K.moe_imbalance(tokens, 8, 256, 32, skew, r)) for r in rs]
    assert all(a > b for a, b in zip(imb, imb[1:])), imb
    assert imb[0] > 1.3 and imb[-1] >= 1.0
    # r = 0 is the plain layout's value, bit for bit
    assert imb[0] == float(K.moe_imbalance(tokens, 8, 256, 32, skew))


def test_balanced_routing_gains_nothing_but_reads_more_experts():
    assert all(float(K.moe_imbalance(512, 8, 256, 72, 0.0, r)) == 1.0 for r in (0, 32, 104))
    # (E + r)/ep physical experts per rank, the picks spread over E + r copies
    hit = K.moe_experts_hit(64, 8, 256, 72, 0.0, 32)
    assert float(hit) == pytest.approx(288 / 72 * -np.expm1(-512 / 288), rel=1e-12)


def test_mixed_batches_leave_plain_rows_bit_for_bit():
    """Rows without replicas computed beside rows with them (the replica code path, the
    prefill dedupe key) equal the same rows computed alone: exactly, but for TTFT's last bit,
    which already depends on how many distinct prefills a batch holds (a row of another isl
    moves it by the same 1e-16)."""
    cols = dict(NVL72, dp=[64, 64, 64, 64], ep=[64, 64, 64, 64], batch_size=[64, 512, 64, 512])
    alone = api.evaluate(strict=False, **cols)
    mixed = api.evaluate(strict=False, **{**cols, "redundant_experts": [0, 0, 64, 64]})
    for m in ("tpot_ms", "memory_gb_per_gpu", "power_w", "usd_per_mtok", "tokens_per_s"):
        assert np.array_equal(mixed[m].to_numpy()[:2], alone[m].to_numpy()[:2]), m
    assert np.allclose(mixed.ttft_ms.to_numpy()[:2], alone.ttft_ms.to_numpy()[:2], rtol=1e-15, atol=0.0)
    # the replicated rows are their own prefills (not deduplicated onto the plain ones) and faster
    assert (mixed.ttft_ms.to_numpy()[2:] < alone.ttft_ms.to_numpy()[2:]).all()


def test_role_columns_inherit_and_override():
    dis = dict(NVL72, mode="disagg", dp=8, ep=8, decode_dp=72, decode_ep=72, batch_size=256)
    assert not _one(**dis).feasible
    assert _one(**dis, decode_redundant_experts=32).feasible
    # the generic column is inherited by both roles: 256 + 32 = 288 divides 8 and 72
    assert _one(**dis, redundant_experts=32).feasible
    afd = dict(NVL72, mode="afd", attn_gpus=8, ffn_gpus=72, batch_size=256)
    assert _one(**afd, redundant_experts=32).feasible
    assert "ffn_gpus must divide the 256 experts + redundant_experts" in _one(**afd, redundant_experts=40) \
        .infeasible_reason


def test_fewest_redundant_per_mode():
    out = fewest_redundant({"mode": np.array(["agg", "agg", "afd", "disagg", "afd"]),
                            "ep": np.array([72, 64, 1, 8, 1]), "ffn_gpus": np.array([0, 0, 72, 0, 72]),
                            "decode_ep": np.array([0, 0, 0, 72, 0]), "prefill_ep": np.array([0, 0, 0, 0, 16])},
                           256)
    assert out["redundant_experts"].tolist() == [32, 0, 32, 0, 32]
    assert out["decode_redundant_experts"].tolist() == [0, 0, 0, 32, 0]
    # afd's prefill workers need none at ep 16 but would inherit 32: one replica per rank (256 + 16)
    assert out["prefill_redundant_experts"].tolist() == [0, 0, 0, 0, 16]


SCENARIO = {"name": "wide", "model": DSV3, "workload": {"isl": 1024, "osl": 256, "routing_skew": 1.2},
            "axes": {"device": ["gb200"], "batch_size": [256], "tp": [1], "dp": [64, 72], "ep": [64, 72]}}


def test_scenario_eplb_fills_the_fewest_replicas():
    plain, wide = space_from_dict(SCENARIO), space_from_dict({**SCENARIO, "eplb": True})
    assert plain.fingerprint != wide.fingerprint and wide.resolved["eplb"] is True
    p, _ = evaluate_batch(plain, np.arange(plain.size))
    w, _ = evaluate_batch(wide, np.arange(wide.size))
    assert p.feasible.tolist() == [True, False, False, False]
    assert w.redundant_experts.tolist() == [0, 32, 0, 32]
    assert w.feasible.tolist() == [True, False, False, True]           # ep 72 over dp 64: tp*dp still binds
    assert w.tpot_ms[0] == p.tpot_ms[0]


@pytest.mark.parametrize("change, words", [
    ({"eplb": True, "model": "Qwen/Qwen3-32B"}, "eplb: Qwen/Qwen3-32B is not a MoE model"),
    ({"eplb": True, "workload": {"redundant_experts": 8}}, "eplb: sets redundant_experts per configuration"),
    ({"eplb": True, "axes": {**SCENARIO["axes"], "redundant_experts": [0, 32]}}, "remove it from axes.redundant"),
    ({"eplb": "yes"}, "eplb"),
])
def test_scenario_eplb_errors(change, words):
    with pytest.raises(DSEError, match=words):
        space_from_dict({**SCENARIO, **change}, where="wide.yaml")


def test_launch_files_carry_each_engines_eplb_flags(tmp_path):
    row = dict(NVL72, redundant_experts=32, config_id=5)
    vllm, sglang, trt = (plan(row, b) for b in ("vllm", "sglang", "trtllm"))
    assert vllm.ok and sglang.ok and trt.ok, (vllm.reasons, sglang.reasons, trt.reasons)
    v = vllm.serve["agg"]
    assert "--enable-eplb" in v and json.loads(v[v.index("--eplb-config") + 1]) == {"num_redundant_experts": 32}
    s = sglang.serve["agg"]
    assert "--enable-eplb" in s and s[s.index("--ep-num-redundant-experts") + 1] == "32"
    assert trt.extra_options["moe_config"]["load_balancer"] == {"num_slots": 288, "layer_updates_per_iter": 1}
    dis = dict(row, mode="disagg", dp=8, ep=8, decode_dp=72, decode_ep=72, redundant_experts=0,
               decode_redundant_experts=32)
    dyn = plan(dis, "dynamo")
    assert "--eplb-config" in dyn.serve["decode"] and "--eplb-config" not in dyn.serve["prefill"]
    assert "--enable-eplb" not in plan(dict(NVL72, dp=8, ep=8), "sglang").serve["agg"]


def test_an_engine_without_a_load_balancer_cannot_express_replicas():
    eng = json.loads(json.dumps(engines()["sglang"]))
    del eng["parallel"]["redundant_experts"]
    pool = Pool("agg", "gb200", tp=1, dp=72, ep=72, pp=1, workers=1, max_seqs=0, redundant=32)
    knobs, why = _layout_flags(eng, pool, True, "sglang agg pool", 256)
    assert why == ["sglang agg pool: redundant_experts 32 is not expressible: the engine has no expert load "
                   "balancer with redundant experts (hardware/engines.yaml parallel.redundant_experts)"]
    assert not any(k.startswith("eplb") or k == "redundant_experts" for k, _ in knobs)


def test_cli_evaluate_takes_redundant_experts(capsys):
    base = ["evaluate", "--model", DSV3, "--device", "gb200", "--tp", "1", "--dp", "72", "--ep", "72",
            "--batch-size", "512", "--weight-dtype", "fp8", "--kv-dtype", "fp8"]
    assert main(base + ["--redundant-experts", "0,32"]) == 0
    out = capsys.readouterr().out
    assert "2 configurations" in out and "1 feasible" in out and "ep must divide the 256 experts" in out
    assert main(base + ["--redundant-experts", "32"]) == 0
    assert "INFEASIBLE" not in capsys.readouterr().out
