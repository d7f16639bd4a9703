"""retune plan: meta-device counts, monotone predictions, method ordering, budgets, suggestions, CLI."""

from __future__ import annotations

import importlib
import json

import pytest
from tests.conftest import tiny_config
from tests.helpers import with_sections as _with
from tests.helpers import write_config
from typer.testing import CliRunner

from retune import plan
from retune.cli import app
from retune.config import validate
from retune.errors import UsageError
from retune.plan.scoring import Job


@pytest.fixture()
def cfg(tiny_model, tiny_data, tmp_path):
    return validate(tiny_config(tiny_model, tiny_data, tmp_path))


def test_meta_counts_match_the_real_model(cfg, tiny_model):
    from transformers import AutoModelForCausalLM

    real = AutoModelForCausalLM.from_pretrained(tiny_model)
    full = plan.model_shape(_with(cfg, adapter={"type": "full"}))
    assert full.params == sum(p.numel() for p in real.parameters())  # the tied head counted once
    assert full.head == 0 and full.adapter == 0
    assert full.quantisable == sum(m.weight.numel() for m in real.modules() if type(m).__name__ == "Linear") - (real.lm_head.weight.numel())
    lora = plan.model_shape(cfg)  # r=4 on all linears: r * (in + out) per adapted linear
    per_layer = 4 * ((64 + 64) + (64 + 32) + (64 + 32) + (64 + 64) + (64 + 128) * 2 + (128 + 64))
    assert lora.adapter == 2 * per_layer
    assert set(lora.adapted_in) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_batch_shape_reads_the_data(cfg):
    b = plan.batch_shape(cfg)
    assert b.source == "data" and 1 <= b.size <= 4 and b.seq_len <= 64 and 0 < b.labelled <= b.size * b.seq_len


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_monotone_in_batch_and_length(cfg, method):
    c = _with(cfg, adapter={"type": method})
    shape = plan.model_shape(c)
    rules = plan.Rules()
    peaks_b = [plan.estimate(c, shape, plan.Batch(bs, 64, bs * 4), rules).parts["activations"] for bs in (1, 2, 4, 8)]
    peaks_t = [plan.estimate(c, shape, plan.Batch(4, t, 16), rules).peak_mb for t in (32, 64, 128, 256)]
    assert peaks_b == sorted(peaks_b) and peaks_b[0] < peaks_b[-1]
    assert peaks_t == sorted(peaks_t)


def test_methods_order_on_a_real_size_model(cfg):
    """Full > LoRA > QLoRA once the weights matter (SmolLM2's shape, built on the meta device)."""
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3)
    config.vocab_size, config.tie_word_embeddings = 49152, True
    batch, rules = plan.Batch(8, 128, 24), plan.Rules()
    peaks = {}
    for method in ("full", "lora", "qlora"):
        c = _with(cfg, adapter={"type": method, "target_modules": "all-linear"})
        shape = plan.shape_from_config(config, adapter=c.adapter if method != "full" else None)
        peaks[method] = plan.estimate(c, shape, batch, rules)
    assert shape.params == pytest.approx(134.5e6 + shape.adapter, rel=0.01)
    assert peaks["full"].peak_mb > peaks["lora"].peak_mb
    assert peaks["lora"].parts["weights"] > peaks["qlora"].parts["weights"]
    assert peaks["full"].parts["optimizer"] == pytest.approx(8 * 134.5e6 / 2**20, rel=0.01)
    # checkpointing keeps one layer's activations plus each layer's input
    ckpt = _with(cfg, adapter={"type": "lora"}, trainer={"gradient_checkpointing": True})
    shape = plan.shape_from_config(config, adapter=ckpt.adapter)
    assert plan.estimate(ckpt, shape, batch, rules).parts["activations"] < peaks["lora"].parts["activations"] / 5


def test_retention_buffers(cfg):
    shape = plan.model_shape(cfg)
    base = plan.estimate(cfg, shape, plan.Batch(4, 64, 8), plan.Rules())
    ewc = plan.estimate(_with(cfg, retention=[{"method": "ewc"}]), shape, plan.Batch(4, 64, 8), plan.Rules())
    assert ewc.parts["retention"] == pytest.approx(2 * 4 * shape.adapter / 2**20)
    assert ewc.peak_mb > base.peak_mb


def test_distillation_counts_the_students_second_forward_and_its_logits(cfg):
    """A distillation step holds a second forward with gradients (a retained micro-batch of
    distill.batch_size rows; with prompts: [new], the task's own batch again) and its fp32 logits."""
    E = importlib.import_module("retune.plan.estimate")
    shape, batch = plan.model_shape(cfg), plan.Batch(4, 64, 8)
    retained = ([], [Job("kept validation loss", "nll", 8, 48)])
    base = plan.estimate(cfg, shape, batch, plan.Rules(), retained)
    on_retain = plan.estimate(_with(cfg, retention=[{"method": "distill", "batch_size": 2}]), shape, batch, plan.Rules(), retained)
    kept = plan.Batch(2, 48, 2)
    c = _with(cfg, retention=[{"method": "distill", "batch_size": 2}])
    expected = E._activations(c, shape, kept, plan.Rules(), "lora") + E.KL_TENSORS * 2 * 48 * shape.vocab * 4
    assert on_retain.parts["distillation"] == pytest.approx(expected / 2**20)
    assert base.parts["distillation"] == 0
    both = plan.estimate(
        _with(cfg, retention=[{"method": "distill", "batch_size": 2, "prompts": ["retain", "new"]}]), shape, batch, plan.Rules(), retained
    )
    assert both.parts["distillation"] > on_retain.parts["distillation"]
    assert both.phases["train"] > on_retain.phases["train"] > base.phases["train"]


def test_allocator_slack_follows_the_malloc(cfg, monkeypatch):
    c = _with(cfg, adapter={"type": "lora"})
    shape, batch = plan.model_shape(c), plan.Batch(8, 64, 16)
    glibc = plan.estimate(c, shape, batch, plan.Rules(malloc="system"))
    tc = plan.estimate(c, shape, batch, plan.Rules(malloc="tcmalloc"))
    live = plan.estimate(c, shape, batch, plan.Rules(alloc_overhead=1.0))  # a GPU allocator's view
    assert live.parts["allocator"] == tc.parts["allocator"] == 0 < glibc.parts["allocator"]  # tcmalloc: live tensors
    assert live.peak_mb == tc.peak_mb < glibc.peak_mb
    assert any("tcmalloc" in n for n in glibc.notes) and not any("malloc" in n for n in tc.notes)
    monkeypatch.setenv("RETUNE_ALLOCATOR", "system")
    assert plan.Rules.for_config(c).malloc == "system"


@pytest.mark.parametrize(("text", "mb"), [("8GB", 8192), ("8 GiB", 8192), ("512MB", 512), ("1.5g", 1536), ("300", 300)])
def test_parse_budget(text, mb):
    assert plan.parse_budget(text) == pytest.approx(mb)


@pytest.mark.parametrize("text", ["", "eight", "8XB", "-1GB", "0GB", "8 G B"])
def test_parse_budget_rejects(text):
    with pytest.raises(UsageError, match="--budget"):
        plan.parse_budget(text)


def test_suggestion_is_the_cheapest_change_that_fits(cfg):
    c = _with(cfg, adapter={"type": "full"}, trainer={"batch_size": 8})
    shape = plan.model_shape(c)
    p = plan.estimate(c, shape)
    fits = plan.check_budget(c, plan.estimate(c, shape), p.peak_mb + 1, shape)
    assert fits.fits and fits.suggestion is None
    tight = plan.check_budget(c, plan.estimate(c, shape), p.peak_mb - 0.01, shape)
    assert not tight.fits and tight.suggestion.startswith("LoRA")  # the first change tried
    assert tight.suggested_peak_mb < p.peak_mb - 0.01
    assert plan.check_budget(c, plan.estimate(c, shape), 1.0, shape).suggestion.startswith("nothing")


def test_cli_plan_json_and_bad_budget(tiny_model, tiny_data, tmp_path):
    path = write_config(tmp_path / "c.yaml", tiny_config(tiny_model, tiny_data, tmp_path))
    runner = CliRunner()
    res = runner.invoke(app, ["plan", str(path), "--json", "--budget", "64GB"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout[res.stdout.index("{") :])
    assert out["peak_mb"] > 0 and out["fits"] is True
    assert {"weights", "gradients", "optimizer", "activations", "logits", "runtime"} <= set(out["parts"])
    bad = runner.invoke(app, ["plan", str(path), "--budget", "lots"])
    assert bad.exit_code == 2 and "--budget" in bad.output
