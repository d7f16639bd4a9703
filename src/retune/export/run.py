"""`retune export RUN --gguf TYPE`: a run as a GGUF file (merged, or its LoRA adapter alone) and an Ollama Modelfile.

The merged model comes from `retune merge` in fp32 (models/merge.py: a QLoRA run is merged into its dequantised
NF4 base, the weights it was trained and scored with), written to a temporary folder and converted from there.
f32/f16/bf16/q8_0 are written by retune (export/gguf_model.py); every other type (q4_k_m, q5_k_m, q6_k, ...)
is an F32 GGUF quantised by llama.cpp's own quantiser (export/quantise.py). Every file is written under a
temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retune.errors import UsageError
from retune.export.gguf_model import NATIVE_TYPES, write_gguf


@dataclass
class Exported:
    gguf: Path
    notes: list[str] = field(default_factory=list)
    modelfile: Path | None = None


def export_run(
    run_dir: str | Path, qtype: str = "q8_0", out: str | Path | None = None, adapter_only: bool = False, ollama: bool = False
) -> Exported:
    from retune.config import load_config
    from retune.models.merge import _check_run, _tokenizer

    run_dir = Path(run_dir)
    _check_run(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    qtype = qtype.lower()
    if adapter_only and ollama:
        raise UsageError("--ollama needs the merged model (a Modelfile's FROM is one GGUF); drop --adapter-only")
    if not adapter_only and qtype not in NATIVE_TYPES:
        from retune.export.quantise import ftype

        ftype(qtype)  # an unknown type (or no llama.cpp) fails before anything is merged or written
    default = f"adapter-{run_dir.name}.gguf" if adapter_only else f"{run_dir.name}-{qtype}.gguf"
    path = Path(out) if out else run_dir / "gguf" / default
    if path.suffix != ".gguf":
        raise UsageError(f"-o {path}: the output is one file and must end in .gguf")
    path.parent.mkdir(parents=True, exist_ok=True)
    result = _adapter(run_dir, cfg, path) if adapter_only else _merged(run_dir, cfg, qtype, path)
    if ollama:
        from retune.export.modelfile import write_modelfile

        result.modelfile = write_modelfile(_tokenizer(run_dir, cfg), path, _system(cfg))
    return result


def _system(cfg: Any) -> str | None:
    """The run's system prompt (data.template.system), which Ollama can only hold if it has no {fields}."""
    system = cfg.data.template.system if cfg.data.template else None
    if system and "{" in system:
        raise UsageError(f"data.template.system has per-record fields ({system!r}); an Ollama SYSTEM is one fixed text")
    return system


def _adapter(run_dir: Path, cfg: Any, path: Path) -> Exported:
    from retune.export.gguf_lora import write_lora_gguf
    from retune.models.resolve import resolve_base

    if not (run_dir / "adapter").exists():
        raise UsageError(f"{run_dir} is a full fine-tune (model/); it has no adapter, export it without --adapter-only")
    base = cfg.model.base
    base_config = json.loads((Path(resolve_base(base)) / "config.json").read_text())
    write_lora_gguf(run_dir / "adapter", base_config, path)
    notes = [f"a LoRA adapter for llama.cpp's --lora on a GGUF of the base ({base})"]
    if getattr(cfg.adapter, "quantization", "none") != "none":
        notes.append("QLoRA: the adapter was trained against the NF4 base; on an f16 GGUF of the base it behaves slightly differently")
    return Exported(path, notes)


def _merged(run_dir: Path, cfg: Any, qtype: str, path: Path) -> Exported:
    from retune.models.merge import merge_run

    notes = []
    if getattr(cfg.adapter, "quantization", "none") != "none":
        notes.append("QLoRA: exported from the merge into the dequantised NF4 base (the weights it was trained with)")
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp:
        merged = merge_run(run_dir, Path(tmp) / "merged", dtype="fp32")
        if qtype in NATIVE_TYPES:
            write_gguf(merged, path, qtype, name=run_dir.name)
        else:
            from retune.export.quantise import quantise, type_counts

            f32 = write_gguf(merged, Path(tmp) / "f32.gguf", "f32", name=run_dir.name)
            quantise(f32, path, qtype)
            counts = ", ".join(f"{n} {k}" for k, n in type_counts(path).most_common())
            notes.append(f"llama.cpp's {qtype} quantiser: 2-D tensors as {counts} (K-quants need rows that are multiples of 256)")
    return Exported(path, notes)
