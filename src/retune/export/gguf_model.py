"""A Hugging Face checkpoint folder as one GGUF file, tensor for tensor what llama.cpp's convert_hf_to_gguf.py writes.

Why our own writer on `gguf.GGUFWriter` rather than running the converter: the converter ships only inside the
llama-cpp-python sdist and runs only beside the gguf-py vendored with it (PyPI gguf fails with it), so an
export would need a 76 MB source download and a second gguf package; the part of it that the Llama and Gemma
families use is this file plus export/vocab.py. tests/test_gguf.py runs the official converter on the same
folders and checks that every tensor (name, type, shape, bytes) and every non-provenance key is identical.

Per family, as the converter does (conversion/llama.py, conversion/gemma.py):
- Llama/Mistral: q_proj and k_proj rows are permuted from HF's rotate-half RoPE layout to llama.cpp's
  interleaved one (per head: [x0..x_{d/2}, y0..] -> [x0, y0, x1, y1, ...]);
- Gemma: RMSNorm weights are stored as w + 1 (HF computes x * (1 + w)); lm_head is tied and not written.
Norms and 1-D tensors stay F32; a tensor whose rows do not split into the quant's blocks falls back to F16.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retune.errors import UsageError

NATIVE_TYPES = ("f32", "f16", "bf16", "q8_0")  # written here; other types go through llama.cpp's quantiser


@dataclass(frozen=True)
class Family:
    arch: str  # gguf.MODEL_ARCH member name
    permute_qk: bool
    norm_plus_one: bool


FAMILIES = {
    "llama": Family("LLAMA", permute_qk=True, norm_plus_one=False),
    "mistral": Family("LLAMA", permute_qk=True, norm_plus_one=False),
    "gemma": Family("GEMMA", permute_qk=False, norm_plus_one=True),
}


def family(config: dict) -> Family:
    kind = config.get("model_type", "?")
    if kind not in FAMILIES:
        raise UsageError(f"GGUF export supports the model families {', '.join(FAMILIES)}; this model is '{kind}'")
    return FAMILIES[kind]


def permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF's rotate-half q/k rows -> llama.cpp's interleaved rows (the converter's LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UsageError(f"{folder}: no *.safetensors weights to export")
    for f in files:
        with safe_open(f, framework="pt") as st:
            for name in st.keys():
                yield name, st.get_tensor(name)


def _hparams(writer: Any, cfg: dict, file_type: int) -> None:
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_head_count_kv(cfg.get("num_key_value_heads", cfg["num_attention_heads"]))
    rope = cfg.get("rope_parameters") or {"rope_theta": cfg.get("rope_theta"), **(cfg.get("rope_scaling") or {})}
    if rope.get("rope_type", "default") not in ("default", "linear"):
        raise UsageError(f"GGUF export does not handle rope_type={rope['rope_type']} yet (default and linear RoPE only)")
    if rope.get("rope_type") == "linear":
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    if rope.get("rope_theta") is not None:
        writer.add_rope_freq_base(rope["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    if cfg.get("head_dim") is not None:
        writer.add_key_length(cfg["head_dim"])
        writer.add_value_length(cfg["head_dim"])
    writer.add_file_type(file_type)
    if cfg["model_type"] != "gemma":
        writer.add_vocab_size(cfg["vocab_size"])
        writer.add_rope_dimension_count(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])


def _weights(folder: Path, cfg: dict, fam: Family) -> Iterator[tuple[str, torch.Tensor]]:
    """(gguf name, fp32 tensor) in the converter's layout."""
    import gguf

    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, fam.arch), cfg["num_hidden_layers"])
    n_head, n_kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    for name, t in _tensors(folder):
        if name.endswith("rotary_emb.inv_freq") or (name == "lm_head.weight" and fam.arch == "GEMMA"):
            continue
        t = t.float() if t.dtype not in (torch.float16, torch.float32) else t
        if fam.permute_qk and name.endswith("q_proj.weight"):
            t = permute(t, n_head)
        elif fam.permute_qk and name.endswith("k_proj.weight"):
            t = permute(t, n_kv)
        if fam.norm_plus_one and name.endswith("norm.weight"):
            t = t + 1
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise UsageError(f"{folder}: tensor {name} has no GGUF name for {fam.arch.lower()}; the export does not cover it")
        yield new, t


def tensor_type(name: str, data: np.ndarray, qtype: str) -> Any:
    import gguf

    if data.ndim <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return gguf.GGMLQuantizationType.F32
    return gguf.GGMLQuantizationType[qtype.upper()]


def quantised(name: str, t: torch.Tensor, qtype: str) -> tuple[np.ndarray, Any]:
    """(bytes or values, ggml type) of one tensor, with the converter's F16 fallback for rows that do not fit."""
    import gguf

    data = t.numpy()
    kind = tensor_type(name, data, qtype)
    try:
        return gguf.quants.quantize(data, kind), kind
    except gguf.QuantError:
        return gguf.quants.quantize(data, gguf.GGMLQuantizationType.F16), gguf.GGMLQuantizationType.F16


@contextlib.contextmanager
def gguf_writer(out: Path, arch: Any) -> Iterator[Any]:
    """A gguf.GGUFWriter on a temporary file beside `out`; on leaving the block the header, metadata and
    tensors are written and the file renamed to `out` (on an error it is removed: never half a file)."""
    import gguf

    tmp = out.with_name(f".{out.name}.tmp")
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch])
    try:
        yield writer
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise


def write_gguf(folder: str | Path, out: str | Path, qtype: str = "f16", name: str | None = None) -> Path:
    """Write the HF checkpoint in `folder` (weights, config.json, tokenizer) as one GGUF file at `out`, atomically."""
    import gguf

    from retune.export.vocab import add_tokenizer

    folder, out = Path(folder), Path(out)
    if qtype not in NATIVE_TYPES:
        raise UsageError(f"write_gguf writes {', '.join(NATIVE_TYPES)}; other types are quantised by llama.cpp")
    cfg = json.loads((folder / "config.json").read_text())
    fam = family(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    with gguf_writer(out, getattr(gguf.MODEL_ARCH, fam.arch)) as writer:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or folder.name)
        _hparams(writer, cfg, getattr(gguf.LlamaFileType, "ALL_F32" if qtype == "f32" else f"MOSTLY_{qtype.upper()}"))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        add_tokenizer(writer, folder, cfg["vocab_size"])
        if fam.arch == "GEMMA":
            writer.add_add_space_prefix(False)
        for gname, t in _weights(folder, cfg, fam):
            data, kind = quantised(gname, t, qtype)
            writer.add_tensor(gname, data, raw_dtype=kind)
    return out
