"""Numeric formats: storage bytes per element and which compute format runs them.

Names are the project's canonical ones; `normalize` maps the spellings used by
Hugging Face configs and measured data (bfloat16, nvfp4, fp8_block, int4_wo, ...).
"""
from __future__ import annotations

from dse.errors import DSEError

__all__ = ["BYTES", "DTYPES", "COMPUTE_FALLBACK", "normalize"]

# Bytes per element including block-scale overhead: NVFP4 stores one FP8 scale per 16
# values (4.5 bits), MXFP4 one E8M0 scale per 32 (4.25 bits), int4 weight-only one BF16
# scale per 128 (4.125 bits), block FP8 one FP32 scale per 128x128 (negligible).
BYTES: dict[str, float] = {
    "fp32": 4.0,
    "bf16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "fp4": 4.5 / 8,
    "int4": 4.125 / 8,
}
DTYPES = tuple(BYTES)

# Compute formats in order of preference for running a given storage format when the
# device lacks it: a device without fp4 runs fp4 weights at fp8 (dequantized), etc.
# int4 is weight-only (w4a16): it computes in bf16 everywhere. fp8 does not fall back to
# int8 (different number format): a device without fp8 dequantizes to bf16.
COMPUTE_FALLBACK: dict[str, tuple[str, ...]] = {
    "fp4": ("fp4", "fp8", "bf16"),
    "fp8": ("fp8", "bf16"),
    "int8": ("int8", "fp8", "bf16"),
    "int4": ("bf16",),
    "bf16": ("bf16",),
    "fp32": ("bf16",),
}

# AIConfigurator's quant-mode names (GEMMQuantMode / MoEQuantMode in ai-dynamo/aiconfigurator
# src/aiconfigurator/sdk/common.py) are among them: sq is SmoothQuant W8A8 int8; fp8_static and
# fp8_ootb are per-tensor fp8; w4afp8 (int4 experts with fp8 activations) is read as int4, its
# weight bytes (what a decode step streams), though its math runs at fp8 rather than bf16.
_ALIASES = {
    "bfloat16": "bf16", "float16": "bf16", "fp16": "bf16", "half": "bf16", "bf16": "bf16",
    "float32": "fp32", "fp32": "fp32",
    "fp8": "fp8", "fp8_block": "fp8", "float8": "fp8", "e4m3": "fp8", "fp8_e4m3": "fp8",
    "fp8_static": "fp8", "fp8_ootb": "fp8",
    "int8": "int8", "w8a8": "int8", "int8_wo": "int8", "sq": "int8",
    "fp4": "fp4", "nvfp4": "fp4", "mxfp4": "fp4", "w4a16_mxfp4": "fp4", "w4a8_mxfp4_mxfp8": "fp4",
    "w4a8_mxfp4_mxfp8_trtllm": "fp4",
    "int4": "int4", "int4_wo": "int4", "w4a16": "int4", "awq": "int4", "gptq": "int4", "w4afp8": "int4",
}


def normalize(name: str, *, field: str = "dtype") -> str:
    """Canonical dtype name, or a DSEError naming the field and the allowed values."""
    key = str(name).strip().lower()
    if key not in _ALIASES:
        raise DSEError(f"{field}: unknown dtype {name!r}; allowed: {', '.join(DTYPES)}")
    return _ALIASES[key]
