"""The fast CPU path: one GGUF run export (`retune export RUN --gguf q8_0`) served through llama.cpp.

The HTTP side is unchanged: GgufRegistry answers the Registry's questions (names, tokenizer, prompt format,
context) and GgufEngine is the Engine with llama.cpp in place of `model.generate`. The tokenizer and its chat
template are read from the GGUF itself by transformers, so prompts are the same token ids llama.cpp's own
tokenizer gives (and that `retune generate` feeds the run), and EOS, stop strings and max_tokens are handled
by the same per-row code as the torch engine (engine.Rows). Adapters are merged in at export: a GGUF server
serves one model and refuses /v1/adapters.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from retune.config import RetuneConfig
from retune.data.templates import Formatter
from retune.errors import UsageError
from retune.rundir import RunDir, is_run_dir
from retune.serve.engine import Engine, Job, Rows
from retune.serve.registry import Conflict, Registry, Served


def find_gguf(path: str | Path) -> Path:
    """A .gguf file, or the merged export inside a run directory's gguf/ folder (or inside a folder)."""
    p = Path(path)
    if p.is_file():
        if p.suffix != ".gguf":
            raise UsageError(f"--gguf {p}: not a .gguf file; give a GGUF, or a run directory exported with retune export RUN --gguf q8_0")
        return p
    if not p.is_dir():
        raise UsageError(f"--gguf {p}: no such file or folder")
    folder = p / "gguf" if is_run_dir(p) else p
    found = sorted(f for f in folder.glob("*.gguf") if not f.name.startswith("adapter-"))
    if len(found) != 1:
        what = "no merged GGUF" if not found else f"{len(found)} GGUFs ({', '.join(f.name for f in found)})"
        fix = f"retune export {p} --gguf q8_0 writes one" if not found else "give the file itself"
        raise UsageError(f"--gguf {p}: {what} in {folder}; {fix}")
    return found[0]


def _llama(path: Path, threads: int) -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise UsageError("--gguf serves through llama-cpp-python, which is not installed (make llamacpp builds and installs it)") from None
    try:  # n_ctx=0: the context the model was trained with
        return llama_cpp.Llama(str(path), n_ctx=0, n_threads=threads, n_threads_batch=threads, verbose=False)
    except ValueError as e:
        raise UsageError(f"--gguf {path}: llama.cpp cannot load it ({e}); an --adapter-only export cannot be served alone") from None


def _data_config(path: Path) -> Any:
    """The prompt settings of the run the GGUF was exported from (RUN/gguf/x.gguf), else the defaults."""
    run = path.resolve().parent.parent
    cfg = RunDir.open(run).config() if path.parent.name == "gguf" and is_run_dir(run) else RetuneConfig()
    return cfg.data


class GgufRegistry(Registry):
    """One merged model in llama.cpp; its tokenizer and chat template as transformers reads them from the file."""

    def __init__(self, path: str | Path, threads: int = 1):
        from transformers import AutoTokenizer

        self.path = find_gguf(path)
        self.model = _llama(self.path, threads)
        self.tok = AutoTokenizer.from_pretrained(self.path.parent, gguf_file=self.path.name)
        self.eos = {i for i in (self.model.token_eos(), self.tok.eos_token_id) if i is not None and i >= 0}
        self.base_name = self.path.stem
        self.base = Served(self.base_name, Formatter(self.tok, _data_config(self.path)), None)
        self.adapters: dict[str, Served] = {}
        self.adapter_dir = None
        self.lock = threading.RLock()

    @property
    def max_context(self) -> int:
        return int(self.model.n_ctx())

    def add(self, name: str, run_dir: str | Path) -> Served:
        raise Conflict("a GGUF server serves one merged model; export each run (retune export RUN --gguf q8_0) and serve it alone")

    def remove(self, name: str) -> None:
        raise Conflict("a GGUF server serves one merged model; there are no adapters to remove")

    def close(self) -> None:
        self.model.close()  # now, not in Llama.__del__ at interpreter exit (where llama.cpp is half torn down)


class GgufEngine(Engine):
    """The Engine's queue and worker; llama.cpp generates the batch's requests one after another (one sequence,
    its KV cache reused for a shared prompt prefix)."""

    registry: GgufRegistry

    def _generate(self, batch: list[Job]) -> None:
        reg = self.registry
        for job in batch:
            if job.cancelled or time.monotonic() > job.deadline:  # waited behind the batch's earlier requests
                job.finish = "timeout"
                continue
            rows = Rows([job], reg.tok, reg.eos)
            # the request's sampling as OpenAI defines it: temperature and top_p only (temp 0: greedy)
            sampling = {"temp": job.temperature, "top_p": job.top_p, "top_k": 0, "min_p": 0.0} if job.temperature > 0 else {"temp": 0.0}
            with reg.lock:
                reg.get(job.model)
                for token in reg.model.generate(job.prompt_ids, **sampling):
                    rows.step([token])
                    if job.finish is not None:
                        break
            self.batches += 1
            self.batched_jobs += 1
