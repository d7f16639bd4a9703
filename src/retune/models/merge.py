"""Fold a run's adapter into its base and write a standalone Hugging Face checkpoint, or export the adapter alone.

LoRA's update is h = Wx + (alpha/r) BAx, so W' = W + (alpha/r) BA gives the same outputs with no extra
matmuls at inference (Hu et al. 2021, sec. 4.1). The fold is done in fp32 and the result is cast to the
output precision once. A QLoRA run trained against NF4 weights: the NF4 base is dequantised to fp32
(exactly the values its 4-bit matmuls used) and the update is folded into that, not into the original
unquantised base, so the merged model reproduces the adapter model that was trained and scored.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal

import torch

from retune.errors import UsageError
from retune.io import replace_dir, staging_dir, write_json
from retune.rundir import RunDir

OutDtype = Literal["auto", "bf16", "fp32"]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _check_run(run_dir: Path) -> None:
    RunDir.open(run_dir).need_model()  # one line naming what is missing: not a run, or no saved model


def output_dtype(cfg: Any, dtype: OutDtype) -> torch.dtype:
    """auto: the precision the base is served in (bf16 where the CPU/GPU has fast bf16, else fp32)."""
    if dtype != "auto":
        return DTYPES[dtype]
    from retune.models.load import bf16_fast

    if cfg.model.dtype == "fp32":
        return torch.float32
    return torch.bfloat16 if cfg.model.dtype == "bf16" or bf16_fast() else torch.float32


def merged_model(run_dir: Path) -> tuple[Any, Any, dict]:
    """(fp32 model with the adapter folded in, config, provenance). Full fine-tunes come back as they are."""
    import peft
    from safetensors import SafetensorError

    from retune.config import load_config
    from retune.models.load import load_base

    cfg = load_config(run_dir / "config.yaml")
    info: dict[str, Any] = {"run": str(run_dir.resolve()), "base": cfg.model.base, "adapter": cfg.adapter.type}
    if (run_dir / "model" / "config.json").exists():  # full fine-tuning: already a standalone model
        fp32 = cfg.model_copy(update={"model": cfg.model.model_copy(update={"dtype": "fp32"})})
        return load_base(fp32, str(run_dir / "model")), cfg, info | {"merged_from": "full fine-tune (nothing to fold)"}
    quantised = cfg.adapter.quantization != "none"
    # the base in fp32 so the fold W + BA is not rounded twice; a quantised base is loaded as trained
    load_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"dtype": "fp32"})})
    base = load_base(load_cfg)
    if quantised:
        base = base.dequantize(dtype=torch.float32)
        _forget_quantisation(base)
        info["merged_from"] = f"{cfg.adapter.quantization} base dequantised to fp32"
    else:
        info["merged_from"] = "fp32 base"
    try:
        model = peft.PeftModel.from_pretrained(base, run_dir / "adapter")
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise UsageError(f"{run_dir}/adapter is corrupt or does not match the base: {str(e).splitlines()[0]}") from None
    if any(getattr(c, "is_prompt_learning", False) for c in model.peft_config.values()):
        raise UsageError(
            f"{run_dir}: adapter.type={cfg.adapter.type} adds virtual tokens, not weights; it cannot be merged "
            "(export it with --adapter-only, or serve it with retune serve)"
        )
    try:
        return model.merge_and_unload(), cfg, info
    except (AttributeError, NotImplementedError, ValueError) as e:
        raise UsageError(f"peft cannot merge adapter.type={cfg.adapter.type}: {e} (use --adapter-only)") from None


def _forget_quantisation(model: Any) -> None:
    # a dequantised model must save as a plain checkpoint, without a quantization_config to re-apply
    for obj in (model, model.config):
        for attr in ("quantization_config", "hf_quantizer"):
            if hasattr(obj, attr):
                try:
                    delattr(obj, attr)
                except AttributeError:
                    setattr(obj, attr, None)
    for attr in ("is_quantized", "is_loaded_in_4bit", "is_loaded_in_8bit"):
        if hasattr(model, attr):
            setattr(model, attr, False)


def merge_run(run_dir: str | Path, out: str | Path | None = None, dtype: OutDtype = "auto") -> Path:
    """Write RUN/merged (or OUT): safetensors weights + config + tokenizer that plain transformers loads."""
    run_dir = Path(run_dir)
    _check_run(run_dir)
    out = Path(out) if out else run_dir / "merged"
    model, cfg, info = merged_model(run_dir)
    target = output_dtype(cfg, dtype)
    model = model.to(target)
    model.config.dtype = target
    tmp = staging_dir(out)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        _tokenizer(run_dir, cfg).save_pretrained(tmp)
        write_json(tmp / "retune_merge.json", info | {"dtype": str(target).removeprefix("torch.")})
        _shareable(tmp)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def export_adapter(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """The adapter alone in peft format, pointing at the base it was trained on, plus the tokenizer."""
    from retune.config import load_config
    from retune.models.resolve import resolve_base

    run_dir = Path(run_dir)
    _check_run(run_dir)
    if not (run_dir / "adapter").exists():
        raise UsageError(f"{run_dir} is a full fine-tune (model/), it has no adapter to export; use retune merge without --adapter-only")
    cfg = load_config(run_dir / "config.yaml")
    out = Path(out) if out else run_dir / "adapter-export"
    tmp = staging_dir(out)
    try:
        shutil.copytree(run_dir / "adapter", tmp, dirs_exist_ok=True)
        conf_path = tmp / "adapter_config.json"
        conf = json.loads(conf_path.read_text())
        conf["base_model_name_or_path"] = resolve_base(cfg.model.base)  # so peft's AutoPeft* finds the base
        write_json(conf_path, conf)
        _tokenizer(run_dir, cfg).save_pretrained(tmp)
        _shareable(tmp)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _shareable(folder: Path) -> None:
    # mkdtemp makes 0700 folders (and some writers 0600 files); an export is meant to be shared
    folder.chmod(0o755)
    for f in folder.rglob("*"):
        f.chmod(0o755 if f.is_dir() else 0o644)


def _tokenizer(run_dir: Path, cfg: Any) -> Any:
    from retune.models.load import load_tokenizer
    from retune.models.resolve import resolve_base

    path = run_dir / "tokenizer" if (run_dir / "tokenizer").exists() else resolve_base(cfg.model.base)
    return load_tokenizer(str(path), cfg.model)
