"""A GGUF file as a base model: dequantised once into a cached bf16 safetensors folder, then used like any folder.

transformers reads GGUF (llama, mistral, gemma, qwen2, ... through its own tensor maps) and dequantises it on
load (~15 s for SmolLM2-135M); `save_pretrained` refuses a GGUF-loaded model, so the weights are copied into a
plain model built from the same config and saved as bf16 once. The cache key is the file's absolute path, size
and modification time, so a replaced file is converted again. The folder is written under a temporary name and
renamed when complete: a crash never leaves a half-written cache that later runs would trust.
Note: quantised weights (Q4_1, Q8_0, ...) are approximations; a model dequantised from them scores as that
approximation, not as the original full-precision release.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from retune.errors import UsageError
from retune.io import replace_dir, staging_dir
from retune.paths import cache_dir


def gguf_file(path: Path) -> Path | None:
    """The GGUF file that `path` names: the file itself, or the only *.gguf in a folder without config.json."""
    if path.is_file():
        return path if path.suffix == ".gguf" else None
    if (path / "config.json").exists():
        return None
    found = sorted(path.glob("*.gguf"))
    if len(found) > 1:
        names = ", ".join(f.name for f in found)
        raise UsageError(f"{path} holds several GGUF files ({names}); set model.base to one of them")
    return found[0] if found else None


def gguf_base_dir(path: Path) -> Path:
    """The cached bf16 Hugging Face folder of a GGUF file, converting it on first use."""
    path = path.resolve()
    st = path.stat()
    key = hashlib.sha256(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    final = cache_dir("models", "gguf") / f"{path.stem}-{key}"
    if (final / "config.json").exists():
        return final
    tmp = staging_dir(final)
    try:
        gguf_to_hf(path, tmp)
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def gguf_to_hf(path: Path, out: Path) -> None:
    """Write `path` (a GGUF model) as a bf16 safetensors folder with its tokenizer into `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        src = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, quantization_config=GgufConfig(dequantize=True))
    except (ValueError, KeyError, RuntimeError, OSError) as e:
        raise UsageError(f"{path}: transformers cannot read this GGUF ({str(e).splitlines()[0]})") from None
    # save_pretrained refuses a GGUF-loaded model: copy the weights into a plain model of the same config.
    config = src.config
    config.quantization_config = None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict({k: v.to(torch.bfloat16) for k, v in src.state_dict().items()})
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
