"""One contender of benchmarks/time_to_accuracy.py, trained in its own process; prints one JSON line.

    python benchmarks/tta_contenders.py retune|retune-nopack|trl-packing|hf-trainer tta|throughput SPEC.json

tta: train on SPEC's examples, score on its test prompts every --eval-every steps (clock stopped),
stop at the highest --targets or past --cap-seconds. throughput: --steps optimizer steps, tokens/s
over the steps after --warmup.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from time_to_accuracy import Clock


class Stop(Exception):
    """Raised from retune's step hook to end training at a target (the loop has no other exit for it)."""


def accuracy(model: Any, spec: dict) -> float:
    """Held-out accuracy by retune's label-likelihood scoring (labels ranked as fp32 ranks them, as the
    quickstart scores): the same function, on the same token ids, for every contender's model object."""
    from retune.evaluate.scoring import label_loglik

    ll = label_loglik(model, spec["test_prompts"], spec["label_ids"], spec["pad_id"], 16, contextlib.nullcontext, fp32=True)
    return sum(int(p == g) for p, g in zip(ll.argmax(dim=1).tolist(), spec["gold"], strict=True)) / len(spec["gold"])


@dataclass
class Probe:
    """Evaluates every `every` steps (and at the last step, and once past the cap) with the clock paused."""

    spec: dict
    every: int
    targets: list[float]
    cap: float | None
    clock: Clock
    history: list[dict] = field(default_factory=list)

    def after_step(self, model: Any, step: int, total: int, examples: int) -> bool:
        """True when training should stop."""
        capped = self.cap is not None and self.clock.elapsed() >= self.cap
        if not (step % self.every == 0 or step >= total or capped):
            return False
        seconds = self.clock.pause()
        t = time.perf_counter()
        acc = accuracy(model, self.spec)
        self.history.append(
            {"step": step, "examples": examples, "train_seconds": seconds, "accuracy": acc, "eval_seconds": time.perf_counter() - t}
        )
        print(json.dumps(self.history[-1]), file=sys.stderr, flush=True)
        model.train()
        self.clock.start()
        return acc >= max(self.targets) or capped


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_retune(name: str, mode: str, spec: dict, a: argparse.Namespace) -> dict:
    from retune import allocator
    from retune.config import load_config
    from retune.data.templates import Encoded
    from retune.objectives import SFT
    from retune.session import Session
    from retune.train import loop
    from retune.train.loop import Hooks, fit
    from retune.train.optim import total_steps

    tmp = tempfile.mkdtemp()
    sets = [*spec["overrides"], f"output.dir={tmp}", "eval.before=false", "trainer.log_every=1"]
    sets += [f"data.packing={'false' if name == 'retune-nopack' else 'auto'}"]
    if mode == "throughput":
        sets += [f"trainer.max_steps={a.steps}", "data.max_train_samples=64"]  # the examples come from SPEC
    cfg = load_config(spec["config"], sets)
    s = Session.begin(cfg)
    prep = s.prepare()
    model = s.load_model(labels=prep.tasks[0].labels)
    s.open_run()
    train: Any = s.retention.replay(model, prep.epoch_examples, s.autocast)  # the recipe's order of set-up
    examples = [Encoded(e["input_ids"], e["labels"], 0) for e in spec["train"]]
    if mode == "tta":
        first = train(0) if callable(train) else train
        assert [e.input_ids for e in first] == [e["input_ids"] for e in spec["train"]], "retune's examples differ from the exported ones"
    else:
        train = examples
    model = s.attach(model)
    regularizers = s.regularizers(model)
    rows: list[dict] = []
    pack_to = s.packing_width(model, SFT, rows.append)
    packed = [0]  # steps that ran packed rows (the loop packs a step only where that saves work)
    split = loop.micro_batches

    def counted(*args: Any, **kwargs: Any) -> Any:
        micro = split(*args, **kwargs)
        packed[0] += any("position_ids" in b for b in micro)
        return micro

    loop.micro_batches = counted
    clock = Clock()
    probe = Probe(spec, a.eval_every, a.targets, a.cap_seconds, clock)
    total = total_steps(cfg.trainer, len(examples))
    hooks = Hooks(log=lambda r: rows.append({**r, "t": time.perf_counter()}))
    if mode == "tta":

        def on_step(state: Any, result: Any) -> None:
            if probe.after_step(model, state.step, total, min(state.step * cfg.trainer.batch_size, len(examples))):
                raise Stop

        hooks.on_step = on_step
    clock.start()
    with contextlib.suppress(Stop):
        fit(model, train, [], cfg.trainer, s.tok.pad_token_id, s.accel, s.run.checkpoints, regularizers, hooks, pack_to=pack_to)
    seconds = clock.pause()
    steps = [r for r in rows if "tokens" in r]
    packing = next((r for r in rows if r.get("event") == "packing"), {"width": None, "off": "data.packing=false"})
    out = {"peak_rss_mb": peak_rss_mb(), "allocator": allocator.active(), "packing": packing, "steps_per_epoch": total}
    out["packed_steps"] = packed[0]
    if mode == "tta":
        trained = min(steps[-1]["step"] * cfg.trainer.batch_size, len(examples))
        return {
            **out,
            "history": probe.history,
            "tokens_per_s": steps[-1]["tokens"] / seconds,
            "train_seconds": seconds,
            "examples": trained,
        }
    w, last = steps[a.warmup - 1], steps[-1]
    return {**out, "tokens_per_s": (last["tokens"] - w["tokens"]) / (last["t"] - w["t"]), "examples": len(steps) * cfg.trainer.batch_size}


def counting(base: Any) -> Any:
    """The trainer class with each step's non-pad tokens and examples counted as it trains."""

    class Counted(base):  # type: ignore[misc, valid-type]
        tokens = 0
        examples = 0

        def training_step(self, model: Any, inputs: dict, num_items_in_batch: Any = None) -> Any:
            mask = inputs.get("attention_mask")
            if mask is not None:
                self.tokens += int(mask.sum())
                self.examples += mask.shape[0]
            else:  # TRL's padding-free batch: one row, position ids restart at each example
                self.tokens += inputs["input_ids"].numel()
                self.examples += int((inputs["position_ids"] == 0).sum())
            return super().training_step(model, inputs, num_items_in_batch)

    return Counted


def run_hf(name: str, mode: str, spec: dict, a: argparse.Namespace) -> dict:
    """TRL's SFTTrainer (packing=True; TRL turns padding_free on with its default "bfd" packing) or a
    plain transformers Trainer + PEFT, both with the config's hyper-parameters and bf16 autocast."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    from retune.data.batching import batch_indices

    hp = spec["hp"]
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    if tok.pad_token_id is None:
        tok.pad_token_id = spec["pad_id"]
    set_seed(hp["seed"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"])  # transformers 5: the checkpoint's dtype (bf16)
    lora = LoraConfig(
        r=hp["r"], lora_alpha=hp["alpha"], lora_dropout=hp["dropout"], target_modules=hp["target_modules"], task_type="CAUSAL_LM"
    )
    common: dict[str, Any] = {
        "output_dir": tempfile.mkdtemp(),
        "per_device_train_batch_size": hp["batch_size"],
        "learning_rate": hp["lr"],
        "lr_scheduler_type": hp["scheduler"],
        "warmup_steps": hp["warmup_ratio"],  # a float < 1: a share of the steps
        "weight_decay": hp["weight_decay"],
        "max_grad_norm": hp["max_grad_norm"],
        "bf16": True,
        "logging_steps": 10,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "dataloader_num_workers": 0,
        "seed": hp["seed"],
        "gradient_checkpointing": False,  # TRL's default is True; retune's is off
    }
    common |= {"num_train_epochs": hp["epochs"]} if mode == "tta" else {"max_steps": a.steps}
    examples = spec["train"]
    clock = Clock()
    probe = Probe(spec, a.eval_every, a.targets, a.cap_seconds, clock)
    marks: list[tuple[int, float, int]] = []  # (step, time, tokens so far) at each step's end

    class Watch(TrainerCallback):
        trainer: Any = None

        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            marks.append((state.global_step, time.perf_counter(), self.trainer.tokens))
            if mode == "tta" and probe.after_step(self.trainer.model, state.global_step, state.max_steps, self.trainer.examples):
                control.should_training_stop = True

    watch = Watch()
    t0 = time.perf_counter()
    if name == "trl-packing":
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(**common, packing=True, max_length=hp["max_length"])
        ds = Dataset.from_list(examples)  # pre-tokenised with labels (-100 on the prompt): TRL keeps them, packs them
        trainer = counting(SFTTrainer)(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=lora, callbacks=[watch])
    else:
        model = get_peft_model(model, lora)
        # retune's batches, in retune's order (length-grouped), taken as they come
        order = [i for b in batch_indices([len(e["input_ids"]) for e in examples], hp["batch_size"], hp["seed"], 0) for i in b]
        ds = Dataset.from_list([examples[i] for i in order])
        args = TrainingArguments(**common, train_sampling_strategy="sequential")
        collator = DataCollatorForSeq2Seq(tok, label_pad_token_id=-100)
        trainer = counting(Trainer)(model=model, args=args, train_dataset=ds, data_collator=collator, callbacks=[watch])
    watch.trainer = trainer
    setup = time.perf_counter() - t0
    clock.start()
    trainer.train()
    seconds = clock.pause()
    out = {"peak_rss_mb": peak_rss_mb(), "allocator": "system", "setup_seconds": setup, "steps_per_epoch": trainer.state.max_steps}
    out["padding_free"] = bool(getattr(trainer, "padding_free", False))
    if mode == "tta":
        return {
            **out,
            "history": probe.history,
            "tokens_per_s": trainer.tokens / seconds,
            "train_seconds": seconds,
            "examples": trainer.examples,
        }
    (_, tw, kw), (_, tl, kl) = marks[a.warmup - 1], marks[-1]
    return {**out, "tokens_per_s": (kl - kw) / (tl - tw), "examples": trainer.examples}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("mode", choices=["tta", "throughput"])
    ap.add_argument("spec")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--targets", default="0.85")
    ap.add_argument("--cap-seconds", type=float)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args()
    a.targets = [float(t) for t in a.targets.split(",")]
    spec = json.loads(Path(a.spec).read_text())
    out = (run_retune if a.name.startswith("retune") else run_hf)(a.name, a.mode, spec, a)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
