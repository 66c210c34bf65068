"""Model architectures from Hugging Face `config.json`, reduced to what costs time and memory.

A model is a tuple of layer groups; identical layers share a group and are computed
once and multiplied by their count. Attention kinds: `gqa` (MHA/GQA/MQA, optionally
sliding-window), `mla` (DeepSeek-style compressed KV, optionally with a DSA top-k
indexer), `linear` (gated delta-net: a constant recurrent state instead of a KV cache).
FFN kinds: `dense` and `moe`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from dse.errors import DSEError

__all__ = ["Attention", "FFN", "LayerGroup", "Model", "model_ids", "resolve_id", "get_model", "parse_config"]


@dataclasses.dataclass(frozen=True)
class Attention:
    kind: str                 # gqa | mla | linear
    num_heads: int
    num_kv_heads: int
    qk_dim: int               # per-head query/key width (mla: nope + rope)
    v_dim: int                # per-head value width
    window: int = 0           # sliding window in tokens; 0 = full context
    q_lora_rank: int = 0      # mla
    kv_lora_rank: int = 0     # mla: compressed KV width
    rope_dim: int = 0         # mla: decoupled rope key width
    sparse_topk: int = 0      # DSA indexer: attend to at most this many tokens
    indexer_dim: int = 0      # DSA indexer key width cached per token
    indexer_heads: int = 0
    output_gate: bool = False  # gated attention output (doubles the q projection)
    # linear attention (gated delta-net)
    lin_k_heads: int = 0
    lin_v_heads: int = 0
    lin_k_dim: int = 0
    lin_v_dim: int = 0
    conv_kernel: int = 0

    def params(self, hidden: int) -> int:
        h = hidden
        if self.kind == "mla":
            qk = self.num_heads * self.qk_dim
            q = h * self.q_lora_rank + self.q_lora_rank * qk if self.q_lora_rank else h * qk
            kv = h * (self.kv_lora_rank + self.rope_dim)
            kv += self.kv_lora_rank * self.num_heads * (self.qk_dim - self.rope_dim + self.v_dim)
            idx = 0
            if self.indexer_heads:
                idx = (self.q_lora_rank or h) * self.indexer_heads * self.indexer_dim
                idx += h * self.indexer_dim + h * self.indexer_heads
            return q + kv + idx + self.num_heads * self.v_dim * h
        if self.kind == "linear":
            qk = self.lin_k_heads * self.lin_k_dim
            vv = self.lin_v_heads * self.lin_v_dim
            proj = h * (2 * qk + 2 * vv + 2 * self.lin_v_heads)  # q, k, v, z gate, beta, a
            return proj + (2 * qk + vv) * self.conv_kernel + vv * h
        q = h * self.num_heads * self.qk_dim * (2 if self.output_gate else 1)
        kv = h * self.num_kv_heads * (self.qk_dim + self.v_dim)
        return q + kv + self.num_heads * self.v_dim * h

    def kv_elems_per_token(self) -> int:
        """Elements cached per token per layer (whole layer, before any TP split)."""
        if self.kind == "mla":
            return self.kv_lora_rank + self.rope_dim + self.indexer_dim
        if self.kind == "linear":
            return 0
        return self.num_kv_heads * (self.qk_dim + self.v_dim)

    def state_elems(self) -> int:
        """Constant per-sequence recurrent state (linear attention), elements per layer."""
        if self.kind != "linear":
            return 0
        conv = (2 * self.lin_k_heads * self.lin_k_dim + self.lin_v_heads * self.lin_v_dim)
        return self.lin_v_heads * self.lin_k_dim * self.lin_v_dim + conv * max(self.conv_kernel - 1, 0)


@dataclasses.dataclass(frozen=True)
class FFN:
    kind: str                 # dense | moe
    intermediate: int         # dense width, or per-expert width for moe
    num_experts: int = 0
    top_k: int = 0
    shared_intermediate: int = 0  # total width of always-on shared experts
    gated: bool = True        # SwiGLU-style: 3 matrices instead of 2

    @property
    def mats(self) -> int:
        return 3 if self.gated else 2

    def params(self, hidden: int) -> int:
        if self.kind == "dense":
            return self.mats * hidden * self.intermediate
        experts = self.num_experts * self.mats * hidden * self.intermediate
        return experts + self.mats * hidden * self.shared_intermediate + hidden * self.num_experts

    def active_params(self, hidden: int) -> int:
        if self.kind == "dense":
            return self.params(hidden)
        per = self.mats * hidden * self.intermediate
        return self.top_k * per + self.mats * hidden * self.shared_intermediate + hidden * self.num_experts


@dataclasses.dataclass(frozen=True)
class LayerGroup:
    count: int
    attention: Attention
    ffn: FFN


@dataclasses.dataclass(frozen=True)
class Model:
    id: str
    hidden: int
    vocab: int
    groups: tuple[LayerGroup, ...]
    tie_embeddings: bool
    native_dtype: str         # dtype of the published checkpoint's large weights
    model_type: str
    source: str
    mtp_heads: int = 0        # multi-token-prediction layers the checkpoint ships (draft heads for speculative decoding)
    max_context: int = 0      # longest prompt + output the checkpoint serves (0 = the config does not say)
    weight_block: tuple[int, int] = ()  # (block_n, block_k) of block-scaled FP8 weights; () = none
    mxfp4: bool = False       # the checkpoint ships MXFP4 weights (quant_method mxfp4: gpt-oss), not NVFP4

    @property
    def num_layers(self) -> int:
        return sum(g.count for g in self.groups)

    @property
    def is_moe(self) -> bool:
        return any(g.ffn.kind == "moe" for g in self.groups)

    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tie_embeddings else 2)

    def total_params(self) -> int:
        layers = sum(g.count * (g.attention.params(self.hidden) + g.ffn.params(self.hidden)) for g in self.groups)
        return layers + self.embedding_params()

    def active_params(self) -> int:
        layers = sum(g.count * (g.attention.params(self.hidden) + g.ffn.active_params(self.hidden)) for g in self.groups)
        return layers + self.embedding_params()

    def kv_elems_per_token(self, context: int) -> int:
        """KV elements per sequence at `context` tokens, all layers (windows bound it)."""
        total = 0
        for g in self.groups:
            a = g.attention
            n = min(context, a.window) if a.window else context
            total += g.count * (a.kv_elems_per_token() * n)
        return total

    def state_elems(self) -> int:
        return sum(g.count * g.attention.state_elems() for g in self.groups)


MAX_INT = 2 ** 53       # exact in float64: any larger width or count is no model
MAX_LAYERS = 10_000     # published models have at most a few hundred layers


def _configs_dir() -> Path:
    return Path(str(resources.files("dse.model_configs")))


@functools.lru_cache(maxsize=1)
def _aliases() -> dict[str, str]:
    data = yaml.load((_configs_dir() / "aliases.yaml").read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    return {str(k).lower(): str(v) for k, v in data.items()}


def model_ids() -> list[str]:
    return sorted(p.name[: -len("_config.json")].replace("--", "/", 1)
                  for p in _configs_dir().glob("*_config.json"))


def resolve_id(ref: str) -> str:
    """Canonical HF id for `ref` (an id, an alias, or a local config path)."""
    if ref.endswith(".json") or Path(ref).is_dir():
        return ref
    known = {i.lower(): i for i in model_ids()}
    key = ref.lower()
    if key in known:
        return known[key]
    if key in _aliases():
        return _aliases()[key]
    raise DSEError(f"model: unknown model {ref!r}; `dse models list` shows the {len(known)} known ids, "
                   "or pass a path to a Hugging Face config.json")


@functools.lru_cache(maxsize=None)
def get_model(ref: str) -> Model:
    """Model by HF id, alias, or local path to a config.json (or a folder holding one)."""
    mid = resolve_id(str(ref))
    if mid.endswith(".json") or Path(mid).is_dir():
        path = Path(mid) / "config.json" if Path(mid).is_dir() else Path(mid)
        if not path.is_file():
            raise DSEError(f"model: no config.json at {path}")
        name = path.parent.name if path.name == "config.json" else path.stem
    else:
        path = _configs_dir() / (mid.replace("/", "--", 1) + "_config.json")
        name = mid
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DSEError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DSEError(f"{path}: not a readable text file ({type(exc).__name__})") from None
    return parse_config(cfg, model_id=name, source=str(path))


def _layer_list(v: Any) -> list:
    if isinstance(v, str):  # some configs carry lists as their Python repr
        v = yaml.safe_load(v.replace("'", '"'))
    return list(v) if isinstance(v, list) else [v]


def _quant_method(cfg: dict[str, Any]) -> tuple[dict, str]:
    q = cfg.get("quantization_config") or (cfg.get("text_config") or {}).get("quantization_config") or {}
    return q, str(q.get("quant_method", "")).lower() if isinstance(q, dict) else ""


def _native_dtype(cfg: dict[str, Any], model_id: str) -> str:
    q, method = _quant_method(cfg)
    text = json.dumps(q).lower() if q else ""
    if method == "mxfp4" or "nvfp4" in text or "fp4" in model_id.lower():
        return "fp4"
    if method == "fp8" or "fp8" in model_id.lower() or "float8" in text:
        return "fp8"
    if method in ("compressed-tensors", "awq", "gptq") and '"num_bits": 4' in text:
        return "int4"
    return "bf16"


# config keys that bound the sequence length; an engine takes the smallest present (vLLM
# vllm/config/model.py _get_and_verify_max_len, possible_keys; its Whisper-only key left out)
_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
                "max_sequence_length", "max_seq_length", "seq_len")


def _rope_factor(rp: Any, keys: "_Keys", base: int, mtype: str) -> int:
    """The context a RoPE scaling entry extends `base` to, as vLLM's _get_and_verify_max_len
    derives it: "factor" scales it (yarn: from original_max_position_embeddings), except for
    su / longrope / llama3, whose max_position_embeddings is already the extended length,
    and gemma3, whose is too (transformers modeling_rope_utils reads the same keys)."""
    if not isinstance(rp, dict) or "gemma3" in mtype:
        return base
    kind = str(rp.get("rope_type") or rp.get("type") or "default")
    if kind in ("su", "longrope", "llama3"):
        return base
    factor = rp.get("factor", 1.0)
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not (math.isfinite(factor) and factor > 0):
        raise keys.fail("rope_scaling.factor", factor, "a finite number > 0")
    if kind == "yarn" and rp.get("original_max_position_embeddings") is not None:
        base = _Keys(rp, keys.where, keys.prefix + "rope_scaling.").value("original_max_position_embeddings", 1)
    return int(base * factor)


def _max_context(keys: "_Keys", top: dict[str, Any], mtype: str) -> int:
    """Longest sequence (prompt + output) the config allows; 0 when it names no length."""
    present = [keys.value(k, 1) for k in _LENGTH_KEYS if keys.cfg.get(k) is not None]
    present += [_Keys(top, keys.where, "").value(k, 1) for k in _LENGTH_KEYS
                if keys.cfg is not top and keys.cfg.get(k) is None and top.get(k) is not None]
    if not present:
        return 0
    base = min(present)
    rope = keys.cfg.get("rope_scaling") or keys.cfg.get("rope_parameters")
    if isinstance(rope, dict) and rope and all(isinstance(v, dict) for v in rope.values()):
        rope = next(iter(rope.values()))     # per layer type (transformers v5): engines assume one factor
    return _rope_factor(rope, keys, base, mtype)


def _weight_block(top: dict[str, Any], where: str) -> tuple[int, int]:
    """(block_n, block_k) of a block-scaled FP8 checkpoint (quantization_config
    weight_block_size, the DeepSeek-V3 / Qwen3-FP8 layout), else ()."""
    q = top.get("quantization_config") or (top.get("text_config") or {}).get("quantization_config") or {}
    block = q.get("weight_block_size") if isinstance(q, dict) else None
    if block is None:
        return ()
    if not (isinstance(block, list) and len(block) == 2 and
            all(isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 65536 for b in block)):
        raise DSEError(f"{where}: quantization_config.weight_block_size: {block!r} is not allowed; "
                       "allowed: two whole numbers in [1, 65536] (block_n, block_k)")
    return int(block[0]), int(block[1])


class _Keys:
    """Integer keys of one config, each checked on the way out: a number (not a bool or a
    string), whole, finite and in range, else a one-line DSEError naming file, key and value."""

    def __init__(self, cfg: dict[str, Any], where: str, prefix: str):
        self.cfg, self.where, self.prefix = cfg, where, prefix

    def fail(self, key: str, val: Any, allowed: str) -> DSEError:
        shown = repr(val) if len(repr(val)) <= 40 else repr(val)[:37] + "..."
        return DSEError(f"{self.where}: {self.prefix}{key}: {shown} is not allowed; allowed: {allowed}")

    def value(self, key: str, low: int, high: int = MAX_INT) -> int:
        val = self.cfg[key]
        ok = isinstance(val, int) or (isinstance(val, float) and math.isfinite(val) and val == int(val))
        if isinstance(val, bool) or not ok or not low <= val <= high:
            raise self.fail(key, val, f"a whole number >= {low} (at most 2^53)" if high == MAX_INT else
                            f"a whole number in [{low}, {high}]")
        return int(val)

    def need(self, key: str, *alts: str, low: int = 1, high: int = MAX_INT) -> int:
        for k in (key, *alts):
            if self.cfg.get(k) is not None:
                return self.value(k, low, high)
        raise DSEError(f"{self.where}: missing {self.prefix + key!r}; cannot derive the architecture")

    def opt(self, *keys: str, default: int = 0, low: int = 0) -> int:
        for k in keys:
            if self.cfg.get(k) is not None:
                return self.value(k, low)
        return default

    def divides(self, key: str, val: int, of_key: str, of: int) -> None:
        if of % val:
            raise self.fail(key, val, f"a divisor of {self.prefix}{of_key} ({of})")

    def flag(self, key: str, default: bool = False) -> bool:
        val = self.cfg.get(key, default)
        if val is None:
            return default
        if not isinstance(val, bool):
            raise self.fail(key, val, "true or false")
        return val


def _ffns(keys: _Keys, mtype: str) -> tuple[FFN | None, FFN]:
    """The MoE FFN (None for a dense model) and the dense FFN of a config."""
    cfg, opt = keys.cfg, keys.opt
    n_experts = opt("n_routed_experts", "num_experts", "num_local_experts")
    top_k = opt("num_experts_per_tok", "experts_per_token", "top_k_experts", "moe_topk")
    zero = next((k for k in ("n_routed_experts", "num_experts", "num_local_experts") if cfg.get(k) == 0), None)
    if zero and top_k and not n_experts:     # experts per token of no experts: a MoE with its count lost
        raise keys.fail(zero, 0, f"a whole number of experts >= 1 (the config routes {top_k} per token)")
    if n_experts and not 1 <= top_k <= n_experts:
        k = next((k for k in ("num_experts_per_tok", "experts_per_token", "top_k_experts", "moe_topk")
                  if cfg.get(k) is not None), None)
        if k is None:
            raise DSEError(f"{keys.where}: missing {keys.prefix + 'num_experts_per_tok'!r} "
                           f"(experts per token of the {n_experts} experts)")
        raise keys.fail(k, cfg.get(k), f"a whole number of experts per token in [1, {n_experts}] (the experts)")
    inter = opt("intermediate_size")
    dense_inter = opt("intermediate_size_mlp", default=inter)
    moe_inter = opt("moe_intermediate_size", default=inter)
    shared = opt("shared_expert_intermediate_size", "shared_intermediate_size")
    if not shared and cfg.get("n_shared_experts"):
        shared = opt("n_shared_experts") * opt("share_expert_dim", default=moe_inter)
    if mtype.startswith("llama4") and n_experts:
        shared = shared or inter
    moe_ffn = FFN(kind="moe", intermediate=moe_inter, num_experts=n_experts, top_k=top_k,
                  shared_intermediate=shared) if n_experts else None
    dense_ffn = FFN(kind="dense", intermediate=dense_inter or inter)
    return moe_ffn, dense_ffn


def parse_config(cfg: dict[str, Any], *, model_id: str, source: str = "") -> Model:
    """Reduce a Hugging Face config dict to layer groups (bad values: one-line DSEError)."""
    where = f"{source or model_id}"
    if not isinstance(cfg, dict):
        raise DSEError(f"{where}: expected a JSON object, got {type(cfg).__name__}")
    try:
        return _parse(cfg, model_id=model_id, source=source, where=where)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError, ZeroDivisionError) as exc:
        if isinstance(exc, DSEError):
            raise
        # a key of unexpected shape the checks above do not name (a list where a number goes, ...)
        raise DSEError(f"{where}: cannot read the config ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
                       ) from None


def _parse(cfg: dict[str, Any], *, model_id: str, source: str, where: str) -> Model:
    top = cfg
    text = cfg.get("text_config")
    if text is not None and not isinstance(text, dict):
        raise DSEError(f"{where}: text_config: expected an object, got {type(text).__name__}")
    cfg = text or cfg
    keys = _Keys(cfg, where, "text_config." if text else "")
    need, opt = keys.need, keys.opt

    mtype = str(cfg.get("model_type") or top.get("model_type") or "")
    if mtype in ("nemotron_h", "nemotron-nas", "deepseek_v4", "deepseek_ref", "kimi_linear", "minimax_m3"):
        raise DSEError(f"{where}: model_type {mtype!r} is not supported yet "
                       "(supported: dense/MoE GQA, MLA, sliding-window and gated-delta-net hybrids)")
    hidden = need("hidden_size")
    layers = need("num_hidden_layers", high=MAX_LAYERS)
    heads = need("num_attention_heads")
    kv_heads = opt("num_key_value_heads", default=heads, low=1)
    head_dim = opt("head_dim", default=hidden // heads, low=1)
    if head_dim < 1:
        raise keys.fail("num_attention_heads", heads, f"at most hidden_size ({hidden}) without a head_dim")
    window = opt("sliding_window", "sliding_window_size")

    # attention per layer
    layer_types = _layer_list(cfg["layer_types"]) if cfg.get("layer_types") else None
    if layer_types is not None and not all(isinstance(t, str) for t in layer_types):
        raise keys.fail("layer_types", cfg["layer_types"], "a list of layer type names")
    if layer_types is None and isinstance(cfg.get("hybrid_layer_pattern"), list):
        layer_types = ["sliding_attention" if x else "full_attention" for x in cfg["hybrid_layer_pattern"]]
    if layer_types is None:
        layer_types = ["full_attention"] * layers
    layer_types = layer_types[:layers]

    if cfg.get("kv_lora_rank"):
        need("kv_lora_rank")           # its own value first: a bad rank is no reason to ask for others
        rope = need("qk_rope_head_dim", low=0)
        full = Attention(
            kind="mla", num_heads=heads, num_kv_heads=heads,
            qk_dim=need("qk_nope_head_dim") + rope, v_dim=need("v_head_dim"),
            q_lora_rank=opt("q_lora_rank"), kv_lora_rank=need("kv_lora_rank"), rope_dim=rope,
            sparse_topk=opt("index_topk"), indexer_dim=opt("index_head_dim"),
            indexer_heads=opt("index_n_heads"))
    else:
        keys.divides("num_key_value_heads", kv_heads, "num_attention_heads", heads)   # GQA: whole KV groups
        full = Attention(kind="gqa", num_heads=heads, num_kv_heads=kv_heads, qk_dim=head_dim,
                         v_dim=opt("v_head_dim", default=head_dim, low=1),
                         output_gate=keys.flag("attn_output_gate"))
    if cfg.get("use_sliding_window") is False and mtype.startswith("qwen"):
        window = 0

    def attn_for(kind: str) -> Attention:
        if kind in ("full_attention", "attention", "global", "deepseek_sparse_attention"):
            if mtype.startswith("gemma4") and cfg.get("global_head_dim"):
                gd = need("global_head_dim")
                kvh = opt("num_global_key_value_heads", default=full.num_kv_heads, low=1)
                keys.divides("num_global_key_value_heads", kvh, "num_attention_heads", heads)
                return dataclasses.replace(full, qk_dim=gd, v_dim=gd, num_kv_heads=kvh)
            return full
        if kind in ("sliding_attention", "local"):
            base = full
            if cfg.get("swa_num_key_value_heads"):
                swa_heads, swa_kv = opt("swa_num_attention_heads", default=heads, low=1), need("swa_num_key_value_heads")
                keys.divides("swa_num_key_value_heads", swa_kv, "swa_num_attention_heads", swa_heads)
                base = dataclasses.replace(full, num_heads=swa_heads, num_kv_heads=swa_kv,
                                           qk_dim=opt("swa_head_dim", default=full.qk_dim, low=1),
                                           v_dim=opt("swa_v_head_dim", default=full.v_dim, low=1))
            if not window:
                raise DSEError(f"{where}: sliding_attention layers but no sliding_window")
            return dataclasses.replace(base, window=window, output_gate=full.output_gate)
        if kind == "linear_attention":
            return Attention(kind="linear", num_heads=heads, num_kv_heads=0, qk_dim=0, v_dim=0,
                             lin_k_heads=need("linear_num_key_heads"), lin_v_heads=need("linear_num_value_heads"),
                             lin_k_dim=need("linear_key_head_dim"), lin_v_dim=need("linear_value_head_dim"),
                             conv_kernel=opt("linear_conv_kernel_dim", default=4, low=1))
        raise DSEError(f"{where}: layer_types: unknown layer type {kind!r}")

    moe_ffn, dense_ffn = _ffns(keys, mtype)

    def is_moe_layer(i: int) -> bool:
        if moe_ffn is None:
            return False
        if i < opt("first_k_dense_replace"):
            return False
        if i in dense_only:
            return False
        if isinstance(freq, list):
            return bool(freq[i])
        step = opt("interleave_moe_layer_step", "decoder_sparse_step", default=opt("moe_layer_freq") or 1)
        if mtype.startswith("llama4"):
            return (i + 1) % max(step, 1) == 0
        return (i + 1) % max(step, 1) == 0 if step > 1 else True

    dense_only = cfg.get("mlp_only_layers") or []
    if not isinstance(dense_only, list) or not all(isinstance(i, int) for i in dense_only):
        raise keys.fail("mlp_only_layers", dense_only, "a list of layer numbers")
    dense_only = set(dense_only)
    freq = cfg.get("moe_layer_freq")
    if isinstance(freq, list) and len(freq) < layers:
        raise keys.fail("moe_layer_freq", freq, f"a list of one entry per layer ({layers})")
    counts: dict[tuple[Attention, FFN], int] = {}
    for i in range(layers):
        key = (attn_for(layer_types[i] if i < len(layer_types) else "full_attention"),
               moe_ffn if is_moe_layer(i) else dense_ffn)
        if key[1].intermediate <= 0:
            raise DSEError(f"{where}: missing {'moe_intermediate_size' if key[1].kind == 'moe' else 'intermediate_size'!r}"
                           " (> 0)")
        counts[key] = counts.get(key, 0) + 1
    groups = tuple(LayerGroup(count=n, attention=a, ffn=f) for (a, f), n in counts.items())
    return Model(id=model_id, hidden=hidden, vocab=need("vocab_size"), groups=groups,
                 tie_embeddings=keys.flag("tie_word_embeddings", bool(top.get("tie_word_embeddings", False))),
                 native_dtype=_native_dtype(top, model_id), model_type=mtype, source=source,
                 mtp_heads=opt("num_nextn_predict_layers", "mtp_num_hidden_layers")
                 or (opt("num_mtp_modules") if keys.flag("use_mtp") else 0),
                 max_context=_max_context(keys, top, mtype), weight_block=_weight_block(top, where),
                 mxfp4=_quant_method(top)[1] == "mxfp4")
