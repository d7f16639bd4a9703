"""retune merge: the merged checkpoint loads with plain transformers and matches the adapter model."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_config
from helpers import write_config
from retune.cli import app

runner = CliRunner()


def _train(tmp_path, tiny_model, tiny_data, **sections):
    from retune.cli import run_train as train

    sections.setdefault("eval", {"batch_size": 8, "before": False})
    cfg = tiny_config(tiny_model, tiny_data, tmp_path / "runs", **sections)
    # a high lr so the adapter visibly changes the outputs (a zero update would make the test vacuous)
    cfg["trainer"].update(max_steps=3, lr=5e-2)
    run_dir, _ = train(str(write_config(tmp_path / "c.yaml", cfg)))
    return run_dir


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model, tiny_data):
    return _train(tmp_path_factory.mktemp("lora"), tiny_model, tiny_data)


def _logits(model, tok, text="Review: a truly great film\nSentiment?"):
    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits.float()


def _greedy(model, tok, text="Review: the plot was dull\nSentiment?", n=12):
    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return out[0, ids["input_ids"].shape[1] :].tolist()


def test_merged_loads_in_plain_transformers_and_matches(tmp_path, lora_run, tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from retune.session import load_run

    out = tmp_path / "merged"
    result = runner.invoke(app, ["merge", str(lora_run), "--out", str(out), "--dtype", "fp32"])
    assert result.exit_code == 0, result.stderr
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)  # plain transformers, no peft
    tok = AutoTokenizer.from_pretrained(out)
    _, adapted, _ = load_run(lora_run)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    assert not torch.allclose(_logits(base, tok), _logits(adapted, tok), atol=1e-3)  # the adapter does something
    torch.testing.assert_close(_logits(merged, tok), _logits(adapted, tok), atol=1e-4, rtol=1e-4)
    assert _greedy(merged, tok) == _greedy(adapted, tok)
    assert not any("lora" in name for name, _ in merged.named_parameters())


def test_qlora_merges_into_the_dequantised_base(tmp_path, tiny_model, tiny_data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from retune.session import load_run

    run = _train(
        tmp_path, tiny_model, tiny_data, adapter={"type": "qlora", "target_modules": ["q_proj", "v_proj"], "compute_dtype": "fp32"}
    )
    out = tmp_path / "merged"
    result = runner.invoke(app, ["merge", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    info = json.loads((out / "retune_merge.json").read_text())
    assert info["merged_from"] == "nf4 base dequantised to fp32" and info["dtype"] == "float32"  # tiny config: model.dtype fp32
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(out)
    _, adapted, _ = load_run(run)  # the 4-bit base + adapter, as trained
    # bitsandbytes' CPU 4-bit matmul rounds differently from a dense fp32 matmul: ~1e-3 on these logits
    torch.testing.assert_close(_logits(merged, tok), _logits(adapted, tok), atol=1e-2, rtol=1e-2)
    assert _greedy(merged, tok) == _greedy(adapted, tok)


def test_adapter_only_export_is_peft_format(tmp_path, lora_run, tiny_model):
    import peft
    from transformers import AutoModelForCausalLM

    out = tmp_path / "export"
    result = runner.invoke(app, ["merge", str(lora_run), "--out", str(out), "--adapter-only"])
    assert result.exit_code == 0, result.stderr
    conf = json.loads((out / "adapter_config.json").read_text())
    assert conf["base_model_name_or_path"] == str(tiny_model)
    model = peft.AutoPeftModelForCausalLM.from_pretrained(out)
    assert isinstance(model, peft.PeftModel)
    assert isinstance(model.get_base_model(), type(AutoModelForCausalLM.from_pretrained(tiny_model)))


def test_merge_bad_run_dir_is_one_line(tmp_path):
    result = runner.invoke(app, ["merge", str(tmp_path / "nope")])
    assert result.exit_code == 2
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and "not a run directory" in err and "Traceback" not in err


def test_merge_never_leaves_a_half_written_export(tmp_path, lora_run, monkeypatch):
    from retune.models import merge

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(merge, "write_json", boom)
    out = tmp_path / "merged"
    with pytest.raises(RuntimeError):
        merge.merge_run(lora_run, out, dtype="fp32")
    assert not out.exists() and not list(tmp_path.glob(".merged.*"))
