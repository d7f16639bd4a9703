"""A run's LoRA adapter as a GGUF adapter for llama.cpp's `--lora` (what convert_lora_to_gguf.py writes).

llama.cpp adds scale * (alpha / r) * B(A x) to each adapted matmul, as peft does, so only A, B and alpha are
stored: `<gguf weight name>.lora_a` (r x in) and `.lora_b` (out x r), general.type=adapter, adapter.type=lora,
adapter.lora.alpha. The q/k row permutation of the base (export/gguf_model.py) applies to B, whose rows are
the output rows of q_proj / k_proj. Tensors are kept in F32: an adapter is small and is added to every token.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from retune.errors import UsageError
from retune.export.gguf_model import family, gguf_writer, permute


def _pairs(adapter_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in load_file(adapter_dir / "adapter_model.safetensors").items():
        for part in ("lora_A", "lora_B"):
            if f".{part}.weight" in name:
                base = name.replace(f".{part}.weight", ".weight").removeprefix("base_model.model.")
                pairs.setdefault(base, {})[part] = t.float()
                break
        else:
            raise UsageError(f"{adapter_dir}: tensor {name} is not a LoRA A/B matrix; llama.cpp's LoRA path cannot load it")
    return pairs


def _check(conf: dict, adapter_dir: Path) -> float:
    if conf.get("peft_type") != "LORA" or conf.get("use_dora") or conf.get("use_rslora"):
        kind = "DoRA" if conf.get("use_dora") else "rsLoRA" if conf.get("use_rslora") else conf.get("peft_type")
        raise UsageError(
            f"{adapter_dir}: llama.cpp's --lora loads plain LoRA adapters, this one is {kind}; export the merged model instead"
        )
    if conf.get("alpha_pattern") or conf.get("rank_pattern"):
        raise UsageError(f"{adapter_dir}: per-module ranks or alphas cannot be written as one adapter.lora.alpha; export the merged model")
    return float(conf["lora_alpha"])


def write_lora_gguf(adapter_dir: str | Path, base_config: dict, out: str | Path) -> Path:
    """Write the peft LoRA adapter in `adapter_dir` (trained on a base with `base_config`) as a GGUF adapter."""
    import gguf

    adapter_dir, out = Path(adapter_dir), Path(out)
    alpha = _check(json.loads((adapter_dir / "adapter_config.json").read_text()), adapter_dir)
    fam = family(base_config)
    arch = getattr(gguf.MODEL_ARCH, fam.arch)
    names = gguf.get_tensor_name_map(arch, base_config["num_hidden_layers"])
    n_head = base_config["num_attention_heads"]
    n_kv = base_config.get("num_key_value_heads", n_head)
    with gguf_writer(out, arch) as writer:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        for name, ab in sorted(_pairs(adapter_dir).items()):
            a, b = ab["lora_A"], ab["lora_B"]
            if fam.permute_qk and name.endswith("q_proj.weight"):
                b = permute(b, n_head)
            elif fam.permute_qk and name.endswith("k_proj.weight"):
                b = permute(b, n_kv)
            new = names.get_name(name, try_suffixes=(".weight",))
            if new is None:
                raise UsageError(f"{adapter_dir}: adapted module {name} has no GGUF name; llama.cpp cannot apply it")
            writer.add_tensor(f"{new}.lora_a", a.numpy(), raw_dtype=gguf.GGMLQuantizationType.F32)
            writer.add_tensor(f"{new}.lora_b", b.contiguous().numpy(), raw_dtype=gguf.GGMLQuantizationType.F32)
    return out
