"""K-quants (q4_k_m, q5_k_m, q6_k, ...) through llama.cpp's own quantiser, from an F32 GGUF written by retune.

llama-cpp-python exposes `llama_model_quantize`, the function behind `llama-quantize`, so no llama.cpp build
happens at export time. K-quant blocks hold 256 values of a row: a tensor whose rows are not a multiple of 256
(SmolLM2's hidden size is 576) falls back to another type inside llama.cpp; `type_counts` reads the result
back so the export says what each tensor became.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from retune.errors import UsageError

INSTALL = "llama-cpp-python (make llamacpp: builds its wheel once, about 10 minutes on 2 cores, then caches it)"


def llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise UsageError(f"this needs llama.cpp's Python bindings: {INSTALL}") from None
    return llama_cpp


def ftype(qtype: str) -> int:
    lib = llama_cpp()
    value = getattr(lib, f"LLAMA_FTYPE_MOSTLY_{qtype.upper()}", None)
    if value is None:
        raise UsageError(f"llama.cpp has no file type '{qtype}' (try q4_k_m, q5_k_m, q6_k, q4_0, q5_0, q8_0, f16, bf16)")
    return int(value)


def quantise(src: Path, out: Path, qtype: str, threads: int = 0) -> Path:
    """llama.cpp's quantiser: `src` (an F32/F16 GGUF) -> `out` of type `qtype`, written atomically."""
    import logging

    lib = llama_cpp()
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # its per-tensor log; type_counts says what matters
    params = lib.llama_model_quantize_default_params()
    params.ftype = ftype(qtype)
    params.nthread = threads
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        rc = lib.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise UsageError(f"llama.cpp's quantiser failed on {src} ({qtype}, code {rc})")
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def type_counts(path: Path) -> Counter[str]:
    """How many 2-D weight tensors of each ggml type the GGUF at `path` holds."""
    import gguf

    reader = gguf.GGUFReader(path)
    return Counter(t.tensor_type.name for t in reader.tensors if len(t.shape) > 1)
