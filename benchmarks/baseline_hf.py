"""The baseline: fine-tuning written the way a user would with a plain Hugging Face Trainer + PEFT,
keeping the libraries' defaults. benchmarks/throughput.py runs it side by side with retune.

    python benchmarks/baseline_hf.py MODEL_DIR full|lora|qlora DATA.jsonl --batch 8 --steps 12 --warmup 2

DATA.jsonl holds {"input_ids": [...]} token sequences (plain causal LM, loss on every token).
Prints one JSON line: non-pad tokens/s over the steps after warm-up, and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)


class StepTimer(TrainerCallback):
    def __init__(self):
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("method", choices=["full", "lora", "qlora"])
    ap.add_argument("data")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args()

    tok = AutoTokenizer.from_pretrained(a.model)
    if a.method == "qlora":
        bnb = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16
        )
        model = AutoModelForCausalLM.from_pretrained(a.model, quantization_config=bnb)
        model = prepare_model_for_kbit_training(model)
    else:
        model = AutoModelForCausalLM.from_pretrained(a.model)
    if a.method in ("lora", "qlora"):
        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)

    rows = [json.loads(line) for line in open(a.data)]
    ds = Dataset.from_list(rows)
    collator = DataCollatorForLanguageModeling(tok, mlm=False)
    tokens_per_step: list[int] = []

    def counting_collator(features):
        batch = collator(features)
        tokens_per_step.append(int(batch["attention_mask"].sum()))
        return batch

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=a.batch,
            max_steps=a.steps,
            learning_rate=2e-4,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            dataloader_num_workers=0,
        )
        trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=counting_collator, callbacks=[timer])
        trainer.train()
    # steps after warm-up: tokens of steps warmup+1..steps over the time between their ends
    measured = sum(tokens_per_step[a.warmup : a.steps])
    seconds = timer.ends[a.steps - 1] - timer.ends[a.warmup - 1]
    print(json.dumps({"tokens_per_s": measured / seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
