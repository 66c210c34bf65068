"""Rules real engines enforce: a configuration an engine refuses to start or to serve is
infeasible here too, with its reason code and the text `dse evaluate` prints; a config.json
that cannot describe a model is a one-line error, through the CLI as well."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import dse
from dse.catalog.models import get_model, parse_config
from dse.deploy.explain import check_config
from dse.errors import DSEError

LLAMA8 = "meta-llama/Llama-3.1-8B"
TINY = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 64, "intermediate_size": 512, "vocab_size": 1000,
        "max_position_embeddings": 4096}
TINY_MOE = {**TINY, "model_type": "qwen3_moe", "num_experts": 8, "num_experts_per_tok": 2,
            "moe_intermediate_size": 384}


def _write(tmp_path, cfg, name="config.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(cfg))
    return str(path)


def _cli(*args: str) -> subprocess.CompletedProcess:
    """`dse ...` in a fresh interpreter, as a user runs it."""
    code = "import sys; from dse.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def _one(**cols):
    return dse.evaluate(strict=False, **cols)


# --- context length ---------------------------------------------------------------------------

def test_a_prompt_beyond_the_context_is_infeasible():
    df = _one(model=LLAMA8, device="h100_sxm", isl=[250_000, 130_816, 130_817], osl=256)
    assert get_model(LLAMA8).max_context == 131_072
    assert df.feasible.tolist() == [False, True, False]          # 130816 + 256 = 131072 exactly fits
    assert (df.infeasible_code[~df.feasible] == "context").all()
    assert df.infeasible_reason[0] == "context: isl + osl exceed the model's 131072-token context"


def test_strict_evaluate_and_check_config_refuse_an_over_long_request():
    with pytest.raises(DSEError, match="131072-token context") as err:
        dse.evaluate(model=LLAMA8, device="h100_sxm", isl=250_000)
    assert "\n" not in str(err.value)
    with pytest.raises(DSEError, match="131072-token context"):
        check_config(model=LLAMA8, device="h100_sxm", isl=131_000, osl=100)
    check_config(model=LLAMA8, device="h100_sxm", isl=131_000, osl=72)


@pytest.mark.parametrize("extra, expected", [
    ({}, 4096),
    # Qwen3's model card: yarn factor 4 over 32768 positions -> 131072 (vLLM takes the yarn base)
    ({"max_position_embeddings": 40960, "rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                                                         "original_max_position_embeddings": 32768}}, 131072),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, 8192),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, 8192),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 512}}, 4096),
    ({"rope_scaling": {"rope_type": "longrope", "factor": 8.0}}, 4096),
    ({"rope_scaling": {"rope_type": "default"}}, 4096),
    ({"rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 3.0},
                          "sliding_attention": {"rope_type": "default"}}}, 12288),
    ({"seq_length": 2048}, 2048),                                  # the smallest length key binds
    ({"max_position_embeddings": None}, 0),                        # no length: no check
])
def test_max_context_follows_the_engines_rope_rule(extra, expected):
    m = parse_config({**TINY, **extra}, model_id="tiny")
    assert m.max_context == expected


def test_shipped_long_context_models():
    assert get_model("deepseek-ai/DeepSeek-V3").max_context == 163_840       # yarn 40 x 4096
    assert get_model("moonshotai/Kimi-K2-Instruct").max_context == 131_072   # yarn 32 x 4096
    assert get_model("Qwen/Qwen3-8B").max_context == 40_960
    assert get_model("google/gemma-4-26B-A4B").max_context == 262_144


def test_gemma3_max_position_is_already_scaled():
    m = parse_config({**TINY, "model_type": "gemma3_text", "max_position_embeddings": 131072,
                      "rope_scaling": {"rope_type": "linear", "factor": 8.0}}, model_id="g3")
    assert m.max_context == 131072


# --- block-scaled FP8 ------------------------------------------------------------------------

def test_block_fp8_moe_shard_must_hold_whole_blocks():
    """Qwen3-235B-A22B-FP8: 1536-wide experts in 128 x 128 blocks. moe_tp 8 gives 192-wide
    shards, which vLLM and SGLang refuse; moe_tp 4 (tp 8, ep 2) gives 384 = 3 x 128."""
    mid = "Qwen/Qwen3-235B-A22B-FP8"
    assert get_model(mid).weight_block == (128, 128)
    df = _one(model=mid, device="h100_sxm", tp=8, ep=[1, 2, 8])
    assert df.feasible.tolist() == [False, True, True]
    assert df.infeasible_code[0] == "structure"
    assert df.infeasible_reason[0] == ("block-scaled FP8 (128x128): moe_intermediate_size 1536 / moe_tp (tp*dp/ep) "
                                       "must be a multiple of 128")
    # attention data parallel counts in moe_tp too: tp 1 x dp 8 / ep 1 = 8
    dp = _one(model=mid, device="h100_sxm", tp=1, dp=8, ep=[1, 8])
    assert dp.feasible.tolist() == [False, True]


def test_block_rule_applies_only_to_block_scaled_weights():
    # bf16 checkpoint: fp8 means per-tensor FP8 (no blocks); fp8_block asks for 128 x 128 blocks
    df = _one(model="Qwen/Qwen3-235B-A22B", device="b200_sxm", tp=8, weight_dtype=["bf16", "fp8", "fp8_block"])
    assert df.feasible.tolist() == [True, True, False]
    assert "moe_intermediate_size 1536" in df.infeasible_reason[2]
    # the FP8 checkpoint served in bf16 or nvfp4 has no FP8 blocks
    df = _one(model="Qwen/Qwen3-235B-A22B-FP8", device="b200_sxm", tp=8, weight_dtype=["bf16", "fp4", "native"])
    assert df.feasible.tolist() == [True, True, False]


def test_block_size_comes_from_the_checkpoint(tmp_path):
    """A 384-wide expert in 64 x 64 blocks splits 6 ways (64 each); in 128 blocks only 3."""
    fp8 = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [64, 64]}
    small = _write(tmp_path, {**TINY_MOE, "quantization_config": fp8}, "small.json")
    large = _write(tmp_path, {**TINY_MOE, "quantization_config": {**fp8, "weight_block_size": [128, 128]}},
                   "large.json")
    assert get_model(small).weight_block == (64, 64) and get_model(small).native_dtype == "fp8"
    # tp 1 x dp 6 = 6 expert ranks, ep 1: moe_tp 6 -> 64-wide shards (dp 3: 128)
    for path, ok in ((small, True), (large, False)):
        df = _one(model=path, device="h100_sxm", tp=1, dp=[6, 3], ep=1)
        assert df.feasible.tolist() == [ok, True], path
    # the attention output projection: 4 heads x 64 = 256 inputs; tp 4 -> 64 per rank
    # (ep = tp: whole experts per rank, moe_tp 1)
    df = _one(model=large, device="h100_sxm", tp=[2, 4], ep=[2, 4])
    assert df.feasible.tolist() == [True, False]
    assert df.infeasible_reason[1] == ("block-scaled FP8 (128x128): the attention output projection's 256 inputs / "
                                       "tp must be a multiple of 128")


def test_measured_block_fp8_layouts_stay_feasible():
    """Layouts SGLang served with DeepSeek-R1 fp8_block (silicon_h100_b200.csv.gz): tp 64
    with ep 8 (moe_tp 8: 256-wide shards), tp 16 without EP (moe_tp 16: 128)."""
    for tp, ep in ((64, 8), (16, 1), (8, 1), (8, 8)):
        check_config(model="deepseek-ai/DeepSeek-R1", device="b200_sxm", tp=tp, ep=ep)
    with pytest.raises(DSEError, match="moe_intermediate_size 2048"):
        check_config(model="deepseek-ai/DeepSeek-R1", device="b200_sxm", tp=32, ep=1)   # 64-wide shards


# --- tensor parallel and the heads -----------------------------------------------------------

def test_tp_above_the_heads_is_refused_but_attention_dp_is_not():
    df = _one(model="Qwen/Qwen3-8B", device="h100_sxm", tp=[64, 1, 32], dp=[1, 64, 1])
    assert df.feasible.tolist() == [False, True, True]
    assert df.infeasible_code[0] == "structure"
    assert df.infeasible_reason[0] == "tp must not exceed the 32 attention heads (use dp for more attention ranks)"


# --- config.json sanity ----------------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    ({"num_experts": 0}, "num_experts: 0 is not allowed; allowed: a whole number of experts >= 1"),
    ({"num_experts_per_tok": 9}, "num_experts_per_tok: 9 is not allowed"),
    ({"num_attention_heads": 0}, "num_attention_heads: 0 is not allowed"),
    ({"num_key_value_heads": 3}, "a divisor of num_attention_heads (4)"),
    ({"num_hidden_layers": -1}, "num_hidden_layers: -1 is not allowed"),
    ({"quantization_config": {"quant_method": "fp8", "weight_block_size": [128]}},
     "quantization_config.weight_block_size: [128] is not allowed"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": "four"}}, "rope_scaling.factor: 'four' is not allowed"),
    ({"max_position_embeddings": 0}, "max_position_embeddings: 0 is not allowed"),
])
def test_bad_config_values_name_the_file_and_field(tmp_path, extra, message):
    path = _write(tmp_path, {**TINY_MOE, **extra})
    with pytest.raises(DSEError) as err:
        get_model(path)
    text = str(err.value)
    assert text.startswith(path) and message in text and "\n" not in text


def test_bad_config_through_the_cli_is_one_line_without_traceback(tmp_path):
    path = _write(tmp_path, {**TINY_MOE, "num_experts": 0})
    proc = _cli("evaluate", "--model", path, "--device", "h100_sxm")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dse: error: {path}: num_experts: 0 is not allowed")


def test_over_long_request_through_the_cli_is_one_line(tmp_path):
    proc = _cli("evaluate", "--model", LLAMA8, "--device", "h100_sxm", "--isl", "250000")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "dse: error: evaluate: meta-llama/Meta-Llama-3.1-8B: tp=1, dp=1, ep=1: context: isl + osl exceed the "
        "model's 131072-token context"]


@pytest.mark.parametrize("args, layout", [
    (("--mode", "disagg", "--prefill-tp", "3"), "prefill tp=3, dp=1, ep=1; decode tp=1, dp=1, ep=1"),
    (("--mode", "disagg", "--decode-tp", "3"), "prefill tp=1, dp=1, ep=1; decode tp=3, dp=1, ep=1"),
    (("--mode", "afd", "--attn-tp", "3", "--attn-gpus", "3"), "attn tp=3, dp=1, ep=1; ffn tp=1, dp=1, ep=1"),
])
def test_a_role_layout_error_names_the_role(args, layout):
    """An error of a disagg or afd row names each role's layout (a bad prefill_tp was
    reported as the row's generic `tp=1`, which the user never set)."""
    proc = _cli("evaluate", "--model", LLAMA8, "--device", "h100_sxm", *args)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"dse: error: evaluate: meta-llama/Meta-Llama-3.1-8B: {layout}: tp must divide the 32 attention heads"]


def test_afd_ffn_pool_must_divide_the_experts_not_a_dense_width():
    """DeepSeek-V3's dense first layers are 18432 wide (divisible by 72); its 256 experts
    are not: an FFN pool of 72 GPUs cannot hold them without redundant experts."""
    import dse

    r = dse.evaluate(model="deepseek-ai/DeepSeek-V3", device="gb200", mode="afd", attn_tp=8, attn_gpus=8,
                     ffn_gpus=[72, 64], batch_size=256, weight_dtype="fp4", kv_dtype="fp8", strict=False)
    assert r.feasible.tolist() == [False, True]
    assert r.infeasible_reason[0] == "ffn_gpus must divide 256 (experts)"
