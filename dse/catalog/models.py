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
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from dse.errors import DSEError


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


def _configs_dir() -> Path:
    return Path(str(resources.files("dse.model_configs")))


@functools.lru_cache(maxsize=1)
def _aliases() -> dict[str, str]:
    data = yaml.safe_load((_configs_dir() / "aliases.yaml").read_text()) or {}
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
    return parse_config(cfg, model_id=name, source=str(path))


def _layer_list(v: Any) -> list:
    if isinstance(v, str):  # some configs carry lists as their Python repr
        v = yaml.safe_load(v.replace("'", '"'))
    return list(v)


def _native_dtype(cfg: dict[str, Any], model_id: str) -> str:
    q = cfg.get("quantization_config") or (cfg.get("text_config") or {}).get("quantization_config") or {}
    method = str(q.get("quant_method", "")).lower() if isinstance(q, dict) else ""
    text = json.dumps(q).lower() if q else ""
    if method == "mxfp4" or "nvfp4" in text or "fp4" in model_id.lower():
        return "fp4"
    if method == "fp8" or "fp8" in model_id.lower() or "float8" in text:
        return "fp8"
    if method in ("compressed-tensors", "awq", "gptq") and '"num_bits": 4' in text:
        return "int4"
    return "bf16"


def parse_config(cfg: dict[str, Any], *, model_id: str, source: str = "") -> Model:
    """Reduce a Hugging Face config dict to layer groups."""
    top = cfg
    cfg = cfg.get("text_config") or cfg
    where = f"{source or model_id}"

    def need(key: str, *alts: str) -> int:
        for k in (key, *alts):
            if cfg.get(k) is not None:
                return int(cfg[k])
        raise DSEError(f"{where}: missing {key!r}; cannot derive the architecture")

    def opt(*keys: str, default: int = 0) -> int:
        for k in keys:
            if cfg.get(k) is not None:
                return int(cfg[k])
        return default

    mtype = str(cfg.get("model_type") or top.get("model_type") or "")
    if mtype in ("nemotron_h", "nemotron-nas", "deepseek_v4", "deepseek_ref", "kimi_linear", "minimax_m3"):
        raise DSEError(f"{where}: model_type {mtype!r} is not supported yet "
                       "(supported: dense/MoE GQA, MLA, sliding-window and gated-delta-net hybrids)")
    hidden = need("hidden_size")
    layers = need("num_hidden_layers")
    heads = need("num_attention_heads")
    kv_heads = opt("num_key_value_heads", default=heads)
    head_dim = opt("head_dim", default=hidden // heads)
    window = opt("sliding_window", "sliding_window_size")

    # attention per layer
    layer_types = _layer_list(cfg["layer_types"]) if cfg.get("layer_types") else None
    if layer_types is None and isinstance(cfg.get("hybrid_layer_pattern"), list):
        layer_types = ["sliding_attention" if x else "full_attention" for x in cfg["hybrid_layer_pattern"]]
    if layer_types is None:
        layer_types = ["full_attention"] * layers
    layer_types = layer_types[:layers]

    if cfg.get("kv_lora_rank"):
        rope = need("qk_rope_head_dim")
        full = Attention(
            kind="mla", num_heads=heads, num_kv_heads=heads,
            qk_dim=need("qk_nope_head_dim") + rope, v_dim=need("v_head_dim"),
            q_lora_rank=opt("q_lora_rank"), kv_lora_rank=need("kv_lora_rank"), rope_dim=rope,
            sparse_topk=opt("index_topk"), indexer_dim=opt("index_head_dim"),
            indexer_heads=opt("index_n_heads"))
    else:
        full = Attention(kind="gqa", num_heads=heads, num_kv_heads=kv_heads, qk_dim=head_dim,
                         v_dim=opt("v_head_dim", default=head_dim),
                         output_gate=bool(cfg.get("attn_output_gate", False)))
    if cfg.get("use_sliding_window") is False and mtype.startswith("qwen"):
        window = 0

    def attn_for(kind: str) -> Attention:
        if kind in ("full_attention", "attention", "global", "deepseek_sparse_attention"):
            if mtype.startswith("gemma4") and cfg.get("global_head_dim"):
                gd = int(cfg["global_head_dim"])
                kvh = opt("num_global_key_value_heads", default=full.num_kv_heads)
                return dataclasses.replace(full, qk_dim=gd, v_dim=gd, num_kv_heads=kvh)
            return full
        if kind in ("sliding_attention", "local"):
            base = full
            if cfg.get("swa_num_key_value_heads"):
                base = dataclasses.replace(full, num_heads=opt("swa_num_attention_heads", default=heads),
                                           num_kv_heads=int(cfg["swa_num_key_value_heads"]),
                                           qk_dim=opt("swa_head_dim", default=full.qk_dim),
                                           v_dim=opt("swa_v_head_dim", default=full.v_dim))
            if not window:
                raise DSEError(f"{where}: sliding_attention layers but no sliding_window")
            return dataclasses.replace(base, window=window, output_gate=full.output_gate)
        if kind == "linear_attention":
            return Attention(kind="linear", num_heads=heads, num_kv_heads=0, qk_dim=0, v_dim=0,
                             lin_k_heads=need("linear_num_key_heads"), lin_v_heads=need("linear_num_value_heads"),
                             lin_k_dim=need("linear_key_head_dim"), lin_v_dim=need("linear_value_head_dim"),
                             conv_kernel=opt("linear_conv_kernel_dim", default=4))
        raise DSEError(f"{where}: layer_types: unknown layer type {kind!r}")

    # FFN per layer
    n_experts = opt("n_routed_experts", "num_experts", "num_local_experts")
    top_k = opt("num_experts_per_tok", "experts_per_token", "top_k_experts", "moe_topk")
    inter = opt("intermediate_size")
    dense_inter = opt("intermediate_size_mlp", default=inter)
    moe_inter = opt("moe_intermediate_size", default=inter)
    shared = opt("shared_expert_intermediate_size", "shared_intermediate_size")
    if not shared and cfg.get("n_shared_experts"):
        shared = int(cfg["n_shared_experts"]) * opt("share_expert_dim", default=moe_inter)
    if mtype.startswith("llama4") and n_experts:
        shared = shared or inter
    moe_ffn = FFN(kind="moe", intermediate=moe_inter, num_experts=n_experts, top_k=top_k,
                  shared_intermediate=shared) if n_experts else None
    dense_ffn = FFN(kind="dense", intermediate=dense_inter or inter)

    def is_moe_layer(i: int) -> bool:
        if moe_ffn is None:
            return False
        if i < opt("first_k_dense_replace"):
            return False
        if i in set(cfg.get("mlp_only_layers") or []):
            return False
        freq = cfg.get("moe_layer_freq")
        if isinstance(freq, list):
            return bool(freq[i])
        step = opt("interleave_moe_layer_step", "decoder_sparse_step", default=int(freq or 1))
        if mtype.startswith("llama4"):
            return (i + 1) % step == 0
        return (i + 1) % max(step, 1) == 0 if step > 1 else True

    counts: dict[tuple[Attention, FFN], int] = {}
    for i in range(layers):
        key = (attn_for(layer_types[i] if i < len(layer_types) else "full_attention"),
               moe_ffn if is_moe_layer(i) else dense_ffn)
        if key[1].intermediate <= 0:
            raise DSEError(f"{where}: missing 'intermediate_size'")
        counts[key] = counts.get(key, 0) + 1
    groups = tuple(LayerGroup(count=n, attention=a, ffn=f) for (a, f), n in counts.items())
    return Model(id=model_id, hidden=hidden, vocab=need("vocab_size"), groups=groups,
                 tie_embeddings=bool(cfg.get("tie_word_embeddings", top.get("tie_word_embeddings", False))),
                 native_dtype=_native_dtype(top, model_id), model_type=mtype, source=source,
                 mtp_heads=opt("num_nextn_predict_layers", "mtp_num_hidden_layers")
                 or (opt("num_mtp_modules") if cfg.get("use_mtp") else 0))
