"""The whole-run plan: every phase modelled, the run logging its phases' peaks, summary.json `plan`."""

from __future__ import annotations

import importlib.util
import json
import resource
import time

import pytest
from tests.conftest import tiny_config
from tests.helpers import with_sections as _with
from tests.helpers import write_config

from retune import plan
from retune.config import validate
from retune.plan.scoring import Job
from retune.session.memory import PhasePeaks, hwm_mb


@pytest.fixture()
def cfg(tiny_model, tiny_data, tmp_path):
    return validate(tiny_config(tiny_model, tiny_data, tmp_path))


def test_a_phase_records_its_own_peak_and_leaves_ru_maxrss_alone():
    peaks = PhasePeaks(interval=0.01)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with peaks.phase("outer"):
        with peaks.phase("big"):
            block = bytearray(300 * 2**20)  # touched: 300 MB resident until freed
            for i in range(0, len(block), 4096):
                block[i] = 1
            time.sleep(0.2)  # the sampler's turn while the block is alive (the process's HWM may be higher already)
            held = peaks.peaks["big"]
            del block
        with peaks.phase("small"):
            pass
    assert peaks.peaks["big"] >= held
    assert peaks.peaks["outer"] >= peaks.peaks["big"]  # a nested phase counts in its parent
    assert peaks.peaks["big"] > peaks.peaks["small"] + 200  # the freed block is not the next phase's
    assert peaks.peak_mb() >= max(hwm_mb(), *peaks.peaks.values())
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >= before  # the kernel's counter is not reset


def test_every_phase_is_planned_and_the_peak_is_their_maximum(cfg):
    p = plan.estimate(cfg)
    assert {"load", "base_eval", "retain_base", "train", "tuned_eval", "retain_tuned", "save"} <= set(p.phases)
    assert p.peak_mb == max(p.phases.values()) and p.phases[p.phase] == p.peak_mb
    assert {j["name"] for j in p.scoring} >= {"train likelihood", "train validation loss", "general-text probe"}


def test_scoring_passes_cost_what_they_hold(cfg):
    """fp32 likelihoods cast a bf16 base (+4 bytes a weight); longer generations hold a larger KV cache;
    a prefill through an unmerged adapter holds the last position's logits only (models/load.py's
    contiguous head input), not every position's."""
    c = _with(cfg, model={"dtype": "bf16"})
    shape, batch, rules = plan.model_shape(c), plan.Batch(4, 64, 8), plan.Rules()
    like = ([Job("t", "likelihood", 8, 40)], [])
    fp32 = plan.estimate(c, shape, batch, rules, like)
    bf16 = plan.estimate(_with(c, eval={"likelihood_fp32": False}), shape, batch, rules, like)
    low = shape.params - shape.adapter
    assert fp32.phases["base_eval"] - bf16.phases["base_eval"] >= 4 * low / 2**20
    assert fp32.phases["train"] > bf16.phases["train"]  # what the round trip leaves stays resident
    live = plan.Rules(load_resident=False)  # live bytes (no malloc keeping training's memory)
    gens = [plan.estimate(c, shape, batch, live, ([Job("g", "generate", 8, 40, n)], [])) for n in (8, 64)]
    assert gens[0].phases["tuned_eval"] < gens[1].phases["tuned_eval"]
    every_position = 8 * 40 * shape.vocab * 4 / 2**20
    assert 0 <= gens[0].phases["tuned_eval"] - gens[0].phases["base_eval"] < every_position


def test_generations_before_training_stay_on_the_cpu(cfg):
    """On the CPU a base-scoring generation leaves its blocks (the malloc keeps them): training and the
    retained phase sit on top of them; a GPU allocator's live bytes do not carry them."""
    c = _with(cfg, model={"dtype": "bf16"}, eval={"likelihood_fp32": False})
    shape, batch = plan.model_shape(c), plan.Batch(4, 64, 8)
    jobs = ([Job("answers", "generate", 8, 40, 32)], [Job("probe", "nll", 8, 40)])
    none = ([Job("answers", "likelihood", 8, 40)], jobs[1])
    for rules, carried in ((plan.Rules(), True), (plan.Rules(load_resident=False), False)):
        gen, like = plan.estimate(c, shape, batch, rules, jobs), plan.estimate(c, shape, batch, rules, none)
        assert (gen.phases["train"] > like.phases["train"]) == carried
        assert (gen.phases["retain_base"] > like.phases["retain_base"]) == carried


def test_train_prints_and_records_the_plan_and_each_phase(tiny_model, tiny_data, tmp_path, capsys):
    from retune.cli import run_train

    raw = tiny_config(tiny_model, tiny_data, tmp_path / "runs", retain={"probe": "general", "probe_samples": 4})
    run_dir, _ = run_train(str(write_config(tmp_path / "c.yaml", raw)))
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "memory plan: peak" in out and "peak memory:" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["plan"]["predicted_mb"] == max(summary["plan"]["phases_mb"].values())
    phases = summary["train"]["phase_peaks_mb"]
    assert {"data", "load", "base_eval", "retain_base", "attach", "train", "tuned_eval", "retain_tuned", "save"} <= set(phases)
    assert max(phases.values()) <= summary["train"]["peak_memory_mb"] + 1
    seconds = summary["train"]["phase_seconds"]  # where the time went, the same phases
    assert set(seconds) == set(phases)
    assert all(v >= 0 for v in seconds.values())
    assert sum(seconds[k] for k in ("data", "load", "base_eval", "train", "tuned_eval", "save")) <= summary["train"]["wall_seconds"] + 0.5


def test_stages_are_planned_with_each_stages_task_type_and_steps(tiny_model, tiny_data, tmp_path):
    """Under `stages:` the plan reads each stage's task (not data:'s), sizes a dpo stage's micro-batch by
    its pairs' two answers and plans the reference pass; `retune plan` and `retune train` read the same."""
    from retune.session.prepare import prepare_data

    template = {"prompt": "Review: {text}\nSentiment?", "response": "{label}"}
    sentiment = {"train": str(tiny_data["train"]), "test": str(tiny_data["test"]), "labels": ["negative", "positive"], "template": template}
    raw = tiny_config(tiny_model, tiny_data, tmp_path)
    raw["data"] = {"max_length": 64}
    raw["stages"] = [
        {"name": "sft", "task": sentiment, "max_steps": 1},
        {"name": "dpo", "type": "dpo", "pairs": "other", "task": {**sentiment, "name": "prefer"}, "max_steps": 3},
    ]
    cfg = validate(raw)
    p = plan.estimate(cfg)
    assert {j["name"] for j in p.scoring} >= {"sft likelihood", "prefer likelihood"}
    assert "reference" in p.phases
    assert p.batch["batch_size"] == 2 * cfg.trainer.batch_size  # chosen and rejected rows of 4 pairs
    only_sft = validate({**raw, "stages": raw["stages"][:1]})
    assert plan.estimate(only_sft).batch["batch_size"] == cfg.trainer.batch_size and "reference" not in plan.estimate(only_sft).phases
    from retune.models.load import load_tokenizer

    prep = prepare_data(cfg, load_tokenizer(str(tiny_model), cfg.model))
    assert [t.name for t in prep.tasks] == ["sft", "prefer"] and [o.name for o in prep.objectives] == ["sft", "dpo"]
    assert plan.batch_shape(cfg, prep) == plan.batch_shape(cfg)


def test_a_search_is_planned_at_its_largest_trial(tiny_model, tiny_data, tmp_path):
    """`retune plan` on a config with tune: plans every combination of the space's choices and range
    ends and reports the largest: that trial's own plan, plus what the earlier trials leave in the
    process."""
    from retune.plan.search import RESIDUE_PER_TRIAL_MB, combinations, largest_trial
    from retune.search.space import base_raw, trial_config

    raw = tiny_config(tiny_model, tiny_data, tmp_path)
    raw["tune"] = {
        "prune": False,
        "space": {
            "adapter.type": {"choice": ["lora", "full"]},
            "trainer.batch_size": {"choice": [2, 8]},
            "trainer.lr": {"loguniform": [1e-4, 1e-2]},
        },
    }
    cfg = validate(raw)
    trials = combinations(cfg)
    assert len(trials) == 8 and {"adapter.type": "full", "trainer.batch_size": 8, "trainer.lr": 1e-4} in trials
    p, trial = largest_trial(cfg)
    assert (trial.adapter.type, trial.trainer.batch_size) == ("full", 8)
    peaks = [plan.estimate(trial_config(base_raw(cfg), t)).peak_mb for t in trials]
    left = RESIDUE_PER_TRIAL_MB * (cfg.tune.trials - 1)
    assert p.peak_mb == pytest.approx(max(peaks) + left) and "largest of 8 trials" in p.notes[0]


def test_export_and_eval_are_planned_as_their_own_processes(cfg, tmp_path, capsys):
    """`retune plan --eval` keeps what `retune eval` runs (loading and the base's scoring). `--export TYPE`:
    the merge holds the checkpoint read and the fp32 merged model, the
    conversion maps the merged file, whatever the type; prompt learning has no merged model and an
    unknown type is not a type (one line, exit 2)."""
    from typer.testing import CliRunner

    from retune.cli import app
    from retune.plan.export import EXPORT_RUNTIME_MB, export_mb, with_export

    s = plan.model_shape(cfg)
    weights = s.params - s.adapter
    native = export_mb(cfg, s, "q8_0")
    assert native == pytest.approx(EXPORT_RUNTIME_MB + (s.ckpt_bytes + 8) * weights / 2**20)
    assert export_mb(cfg, s, "f16") == native  # the converted tensors reuse the merge's blocks
    assert export_mb(cfg, s, "q4_k_m") == native  # llama.cpp maps its F32 input into what the writer freed
    full = _with(cfg, adapter={"type": "full"})
    assert export_mb(full, plan.model_shape(full), "q8_0") == pytest.approx(EXPORT_RUNTIME_MB + 12 * plan.model_shape(full).params / 2**20)
    p = with_export(plan.estimate(cfg, s), cfg, s, "q8_0")
    assert list(p.phases)[-1] == "export" and p.peak_mb == max(p.phases.values()) and p.phases[p.phase] == p.peak_mb

    path = write_config(tmp_path / "c.yaml", cfg.model_dump(mode="json", exclude_none=True))
    out = CliRunner().invoke(app, ["plan", str(path), "--export", "q8_0", "--json"])
    assert out.exit_code == 0 and json.loads(out.stdout[out.stdout.index("{") :])["phases"]["export"] == pytest.approx(native, abs=0.1)
    prefix = write_config(tmp_path / "p.yaml", {**cfg.model_dump(mode="json", exclude_none=True), "adapter": {"type": "prefix_tuning"}})
    bad = CliRunner().invoke(app, ["plan", str(prefix), "--export", "q8_0"])
    assert bad.exit_code == 2 and "virtual tokens" in bad.output and "Traceback" not in bad.output
    ev = json.loads((r := CliRunner().invoke(app, ["plan", str(path), "--eval", "--json"])).stdout[r.stdout.index("{") :])
    assert set(ev["phases"]) == {"load", "base_eval", "retain_base"} & set(p.phases)  # `retune eval`: no training
    assert ev["peak_mb"] == pytest.approx(max(p.phases[k] for k in ev["phases"]), abs=0.1)
    if importlib.util.find_spec("llama_cpp") is not None:  # llama.cpp knows its types; without it the plan still plans
        unknown = CliRunner().invoke(app, ["plan", str(path), "--export", "q3_zz"])
        assert unknown.exit_code == 2 and "q3_zz" in unknown.output and "Traceback" not in unknown.output


def test_training_is_planned_with_the_batch_shapes_it_meets(cfg):
    """batch_shape counts the distinct micro-batch shapes of the loop's own batches (what leaves
    per-shape state in the process), and training after an fp32 scoring pass is planned to grow with
    them, up to a cap."""
    from retune.data.batching import batch_indices, padded_width
    from retune.models.load import load_tokenizer
    from retune.objectives import SFT
    from retune.plan.phases import TRAIN_AFTER_FP32, train_after_fp32
    from retune.session.prepare import prepare_data

    prep = prepare_data(cfg, load_tokenizer(str(cfg.model.base), cfg.model))
    b = plan.batch_shape(cfg, prep)
    t = cfg.trainer
    pool = prep.epoch_examples(0)
    widths = {
        (len(idx), max(len(pool[i].input_ids) for i in idx))
        for idx in batch_indices([SFT.length(e) for e in pool], t.batch_size, t.seed, 0)[: t.max_steps]
    }
    assert b.shapes == len({(n, padded_width(w)) for n, w in widths}) >= 1
    assert [train_after_fp32(n) for n in (1, 10, 20)] == sorted(train_after_fp32(n) for n in (1, 10, 20))
    assert train_after_fp32(10_000) == TRAIN_AFTER_FP32[2]
    c = _with(cfg, model={"dtype": "bf16"})
    shape = plan.model_shape(c)
    jobs = ([Job("labels", "likelihood", 8, 64)], [])  # an fp32 likelihood pass before training
    few, many = (plan.estimate(c, shape, plan.Batch(4, 64, 8, shapes=n), plan.Rules(), jobs).phases["train"] for n in (1, 20))
    assert many > few
