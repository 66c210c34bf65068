"""The quality-cost catalog: sourced rows, the derived rule, the native-format zero, bad files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from dse.catalog import quality as q
from dse.catalog.models import get_model, model_ids
from dse.errors import DSEError

TABLE = q.load_quality()
DATA = yaml.safe_load(Path(TABLE.path).read_text())


def test_every_format_has_sourced_rows():
    for part, formats in q.PARTS.items():
        for fmt in formats:
            rows = [r for r in TABLE.rows if r.part == part and r.format == fmt]
            assert rows, f"{part} {fmt}: no sourced row"
            for r in rows:
                src = TABLE.sources[r.source]
                assert src["url"].startswith("http") and src["title"] and src["where"]


def test_committed_rule_is_what_the_rows_derive():
    assert DATA["rules"] == q.derive_rules(TABLE.rows)


def test_rule_pools_its_own_cell_first():
    rule = TABLE.rules["weights"]["fp8"]["10-100B dense"]
    assert rule["from"] == "10-100B dense"
    own = [r for r in TABLE.rows if r.format == "fp8" and r.part == "weights" and r.cell == ("10-100B", "dense")]
    assert sorted(rule["rows"]) == sorted(r.id for r in own)
    assert rule["loss_pp"] == pytest.approx(np.mean([r.loss_pp for r in own]), abs=0.005)


def test_row_loss_is_baseline_minus_quantized_average():
    row = next(r for r in TABLE.rows if r.id == "deepseek-r1-nvfp4")
    assert row.loss_pp == pytest.approx(np.mean([90.8, 96.3, 80.0, 69.7, 95.4]) - np.mean([90.7, 96.1, 80.0, 69.2, 94.2]))


def test_checkpoints_are_shipped_models_and_sizes_agree():
    known = set(model_ids())
    for r in TABLE.rows:
        if r.checkpoint:
            assert r.checkpoint in known, r.id
            m = get_model(r.checkpoint)
            assert m.is_moe == r.moe and q.size_class(m.total_params()) == q.size_class(r.params_b * 1e9), r.id


def test_bf16_is_zero():
    for mid in ("meta-llama/Meta-Llama-3.1-8B", "Qwen/Qwen3-235B-A22B", "deepseek-ai/DeepSeek-V3"):
        assert q.quality_loss(mid, "bf16", "bf16") == (0.0, 0.0)
        assert q.quality_loss(mid, "native", "") == (0.0, 0.0)


def test_native_quantized_release_loses_nothing_at_its_format():
    assert get_model("openai/gpt-oss-120b").native_dtype == "fp4"
    assert q.quality_loss("openai/gpt-oss-120b", "mxfp4", "bf16") == (0.0, 0.0)
    assert q.quality_loss("nvidia/Qwen3-235B-A22B-NVFP4", "nvfp4", "bf16") == (0.0, 0.0)
    assert q.quality_loss("nvidia/Qwen3-235B-A22B-NVFP4", "native", "bf16") == (0.0, 0.0)
    # the same architecture released in bf16 pays the fp4 rule
    loss, p90 = q.quality_loss("Qwen/Qwen3-235B-A22B", "fp4", "bf16")
    assert loss > 0 and p90 >= loss


def test_listed_checkpoint_uses_its_own_rows():
    loss, p90 = q.quality_loss("deepseek-ai/DeepSeek-R1", "fp4", "bf16")   # native fp8 -> NVIDIA's FP4 card
    assert loss == pytest.approx(0.40, abs=1e-9) and p90 >= loss
    loss, _ = q.quality_loss("meta-llama/Meta-Llama-3.1-8B", "int4", "bf16")
    assert loss == pytest.approx(69.32 - 67.57)


def test_losses_ordered_as_the_sources_support():
    # within each model class: bf16 <= fp8 and fp8 <= int4 up to the data's own p90 spread
    for mid in ("meta-llama/Meta-Llama-3.1-8B", "meta-llama/Meta-Llama-3.1-70B", "Qwen/Qwen3-32B"):
        bf16, _ = q.quality_loss(mid, "bf16", "bf16")
        fp8, fp8_p90 = q.quality_loss(mid, "fp8", "bf16")
        int4, int4_p90 = q.quality_loss(mid, "int4", "bf16")
        assert bf16 <= fp8 <= int4_p90 and fp8 <= int4 + (int4_p90 - int4)
    # KV: int8 costs no more than int4 (LMDeploy, same three models)
    assert q.quality_loss("Qwen/Qwen3-8B", "bf16", "int8")[0] <= q.quality_loss("Qwen/Qwen3-8B", "bf16", "int4")[0]


def test_formats_add_and_unsourced_format_is_nan():
    mid = "meta-llama/Meta-Llama-3.1-70B"
    w = q.quality_loss(mid, "fp8", "bf16")
    k = q.quality_loss(mid, "bf16", "fp8")
    assert q.quality_loss(mid, "fp8", "fp8") == pytest.approx((w[0] + k[0], w[1] + k[1]))
    assert all(np.isnan(q.quality_loss(mid, "bf16", "fp4")))      # no source for an fp4 KV cache


def test_arrays_of_codes_match_scalars():
    mid = "Qwen/Qwen3-32B"
    wv, kv = np.array(["", "native", "fp8", "int4", "fp4", "int8_wo"], dtype=object), np.array(["", "fp8", "int4"], dtype=object)
    rng = np.random.default_rng(0)
    wc, kc = rng.integers(0, len(wv), 5000), rng.integers(0, len(kv), 5000)
    loss, p90 = q.quality_loss(mid, wc, kc, weight_vocab=wv, kv_vocab=kv)
    assert loss.shape == (5000,)
    for i in range(0, 5000, 499):
        assert (loss[i], p90[i]) == q.quality_loss(mid, str(wv[wc[i]]), str(kv[kc[i]]))
    names = q.quality_loss(mid, np.array(["fp8", "int4"]), "fp8")
    assert names[0][0] == q.quality_loss(mid, "fp8", "fp8")[0]


def _write(tmp_path, mutate) -> str:
    data = yaml.safe_load(Path(TABLE.path).read_text())
    mutate(data)
    p = tmp_path / "quality.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(p)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["rows"][0].pop("source"), "rows[llama31-8b-it-fp8]: missing field 'source'"),
    (lambda d: d["rows"][0].update(source="nowhere"), "rows[llama31-8b-it-fp8].source: 'nowhere' is not a key of sources"),
    (lambda d: d["rows"][0].update(format="fp6"), "rows[llama31-8b-it-fp8].format: 'fp6'; allowed for weights"),
    (lambda d: d["rows"][0].update(baseline="high"), "rows[llama31-8b-it-fp8].baseline: expected"),
    (lambda d: d["rows"][0].update(loss_pp=1.0), "give loss_pp or baseline + quantized, not both"),
    (lambda d: d["sources"]["nm-llama31-8b-it-fp8"].pop("url"), "sources.nm-llama31-8b-it-fp8: missing field 'url'"),
    (lambda d: d.pop("rules"), "rules: missing"),
    (lambda d: d["rules"]["weights"].pop("int4"), "rules.weights.int4: missing or incomplete"),
])
def test_bad_file_gives_one_line_error(tmp_path, mutate, message):
    path = _write(tmp_path, mutate)
    with pytest.raises(DSEError) as err:
        q.load_quality(path)
    text = str(err.value)
    assert message in text and path in text and "\n" not in text


def test_an_upper_bound_counts_as_half_its_bound_and_sets_the_p90():
    from dse.catalog.quality import Row, derive_rules
    rows = [Row(id=f"r{i}", model="m", part="kv", format="fp8", params_b=30.0, moe=True, loss_pp=2.0,
                baseline_format="bf16", source="s", bound="upper") for i in range(3)]
    cell = derive_rules(rows)["kv"]["fp8"]["10-100B moe"]
    assert cell["loss_pp"] == 1.0 and cell["p90_pp"] == 1.8


def test_the_engine_reports_quality_loss_per_row():
    import dse
    df = dse.evaluate(model="meta-llama/Llama-3.1-70B", device="h100_sxm", tp=4,
                      weight_dtype=["native", "bf16", "fp8", "fp4"], kv_dtype=["bf16", "bf16", "fp8", "fp8"])
    loss, p90 = df.quality_loss.to_numpy(), df.quality_loss_p90.to_numpy()
    assert loss[0] == loss[1] == 0.0 and (p90 >= loss).all()
    want = [q.quality_loss("meta-llama/Llama-3.1-70B", w, k) for w, k in (("fp8", "fp8"), ("fp4", "fp8"))]
    assert np.allclose(loss[2:], [w[0] for w in want]) and loss[3] > loss[2] > 0
    native = dse.evaluate(model="openai/gpt-oss-120b", device="b200_sxm", tp=2, weight_dtype="native")
    assert native.quality_loss.iloc[0] == 0.0


def test_quickstart_sweep_keeps_its_quality_limit(tmp_path):
    import pandas as pd

    import dse
    root = Path(__file__).resolve().parents[1]
    data = yaml.safe_load((root / "search_spaces" / "quickstart.yaml").read_text())
    assert data["constraints"]["max_quality_loss"] == 1.0
    res = dse.sweep(root / "search_spaces" / "quickstart.yaml", out=tmp_path / "q")
    front = pd.read_csv(res.run_dir / "pareto.csv")
    assert len(front) and (front.quality_loss <= 1.0).all()
    configs = pd.read_parquet(res.run_dir / "configs.parquet", columns=["quality_loss", "feasible"])
    assert (configs.quality_loss > 1.0).any()            # the limit binds: lossier formats were in the space
    assert not configs.feasible[configs.quality_loss > 1.0].any()
