"""Architecture matrix: the real recipe (LoRA all-linear, full fine-tuning, merge, plan) on a tiny model of each family.

Each family is built in-process from its real transformers config class (2 layers, 4 heads, hidden 32-64) with a
byte-level BPE tokenizer and a chat template, so nothing is downloaded. Gemma's tokenizer adds a BOS, as the real one does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import CHAT_TEMPLATE, FILLER, NEGATIVE, POSITIVE, tiny_config
from helpers import write_config

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 256}
GQA = {**SMALL, "num_key_value_heads": 2}

# family -> (config class, model class, config kwargs beyond the common ones, adds a BOS token)
FAMILIES: dict[str, tuple[str, str, dict, bool]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", GQA, False),
    "mistral": ("MistralConfig", "MistralForCausalLM", {**GQA, "sliding_window": None}, False),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", GQA, False),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {**GQA, "head_dim": 8}, False),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {**GQA, "head_dim": 8, "sliding_window": 64}, True),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {**GQA, "head_dim": 8, "sliding_window": 64}, True),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", GQA, False),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 256, "n_inner": 64}, False),
}

# the Linear layers `all-linear` must adapt in each family (lm_head never)
EXPECTED_TARGETS = {
    "gpt2": {"c_attn", "c_proj", "c_fc"},
    "phi3": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"},
}
LLAMA_LIKE = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

# family -> the src/ bug that breaks it (strict xfail); none found so far
XFAIL: dict[str, str] = {}


def _params() -> list:
    return [pytest.param(n, id=n, marks=[pytest.mark.xfail(reason=XFAIL[n], strict=True)] if n in XFAIL else []) for n in FAMILIES]


def build_family(name: str, folder: Path, **overrides) -> Path:
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    config_cls, model_cls, extra, adds_bos = FAMILIES[name]
    corpus = [" ".join(POSITIVE + NEGATIVE + FILLER + ["positive", "negative", "user", "assistant", "system", "review", "sentiment"])] * 20
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<bos>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    bos = "<bos>" if adds_bos else "<|im_start|>"
    if adds_bos:  # Gemma's convention: the tokenizer prepends <bos> to every encoding
        bos_id = tok.token_to_id("<bos>")
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=bos)
    fast.chat_template = ("{{ bos_token }}" if adds_bos else "") + CHAT_TEMPLATE  # Gemma's template opens with the BOS too
    ids = {"eos_token_id": fast.eos_token_id, "pad_token_id": fast.pad_token_id, "bos_token_id": fast.bos_token_id}
    kwargs = {"vocab_size": len(fast), "tie_word_embeddings": True, **ids, **extra, **overrides}
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(**kwargs)
    model = getattr(transformers, model_cls)(config)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=_params())
def family(request, tmp_path_factory) -> tuple[str, Path]:
    name = request.param
    return name, build_family(name, tmp_path_factory.mktemp(f"tiny-{name}"))


def _train(tmp_path, model, tiny_data, name, **sections):
    from retune.cli import run_train

    cfg = tiny_config(model, tiny_data, tmp_path / "runs", **sections)
    path = write_config(tmp_path / f"{name}.yaml", cfg)
    run_dir, summary = run_train(str(path))
    return path, run_dir, summary


@pytest.fixture(scope="module")
def lora_run(family, tiny_data, tmp_path_factory):
    """One LoRA all-linear run per family, shared by the training, merge and plan checks."""
    name, model = family
    tmp = tmp_path_factory.mktemp(f"lora-{name}")
    return _train(tmp, model, tiny_data, "lora", adapter={"type": "lora", "target_modules": "all-linear"}, trainer={"max_steps": 20})


def test_lora_all_linear_learns(family, lora_run):
    name, _ = family
    _, run_dir, s = lora_run
    assert s["status"] == "completed"
    base, final = s["base"]["train"], s["final"]["train"]
    assert final["val_loss"] < base["val_loss"]
    targets = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())["target_modules"]
    targets = {targets} if isinstance(targets, str) else set(targets)
    leaves = {t.rsplit(".", 1)[-1] for t in targets}
    assert "lm_head" not in leaves
    assert leaves == EXPECTED_TARGETS.get(name, LLAMA_LIKE), leaves
    per_layer = {int(m.group(1)) for t in targets if (m := re.search(r"\.(\d+)\.", t))}
    assert per_layer == {0, 1}  # every layer, not just one


def test_full_finetune_learns(family, tiny_data, tmp_path):
    _, model = family
    _, run_dir, s = _train(tmp_path, model, tiny_data, "full", adapter={"type": "full"}, trainer={"max_steps": 5, "lr": 1e-3})
    assert s["status"] == "completed"
    assert (run_dir / "model").is_dir()
    assert s["final"]["train"]["val_loss"] < s["base"]["train"]["val_loss"]


def test_merge_generates_like_the_adapter(family, lora_run, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from retune.models.merge import merge_run
    from retune.session import load_run

    _, run_dir, _ = lora_run
    _, tuned, tok = load_run(run_dir)
    merged_dir = merge_run(run_dir, tmp_path / "merged", "fp32")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    messages = [{"role": "user", "content": "Review: the plot was superb\nSentiment?"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    enc = tok(prompt, return_tensors="pt")
    # min_new_tokens keeps EOS from ending both early, so the comparison covers every new token
    kw = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False, "pad_token_id": tok.pad_token_id}
    tuned.eval()
    merged.eval()
    with torch.no_grad():
        want = tuned.generate(**enc, **kw)
        got = merged.generate(**enc, **kw)
        torch.testing.assert_close(merged(**enc).logits, tuned(**enc).logits, atol=1e-4, rtol=1e-4)
    assert got.shape[1] == enc["input_ids"].shape[1] + 6
    assert got.tolist() == want.tolist()


@pytest.mark.parametrize("fmt", ["chat", "plain"])
def test_one_bos_where_the_family_uses_one(family, lora_run, fmt):
    """Gemma's tokenizer and chat template both carry a BOS: an encoded example starts with exactly one."""
    from retune.config import load_config
    from retune.data.templates import Formatter
    from retune.models.load import load_tokenizer

    name, _ = family
    cfg_path, run_dir, _ = lora_run
    cfg = load_config(cfg_path, [f"data.format={fmt}"])
    tok = load_tokenizer(str(run_dir / "tokenizer"), cfg.model)
    ids = Formatter(tok, cfg.data).encode("Review: the plot was superb\nSentiment?", "positive").input_ids
    if FAMILIES[name][3]:
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1, ids
    else:
        assert ids[0] != tok.convert_tokens_to_ids("<bos>"), ids


def test_plan_predicts_a_peak(family, lora_run):
    from retune import plan as planner
    from retune.config import load_config

    cfg_path, _, _ = lora_run
    cfg = load_config(cfg_path)
    assert planner.estimate(cfg, planner.model_shape(cfg)).peak_mb > 0


def test_qlora_llama(tiny_data, tmp_path):
    """QLoRA on one family, where bitsandbytes' 4-bit layers run on this machine."""
    pytest.importorskip("bitsandbytes")
    # bitsandbytes' CPU 4-bit kernel packs blocks of 64 inputs: hidden 32 leaves a layer with no whole block
    model = build_family("llama", tmp_path / "tiny-llama", hidden_size=64, intermediate_size=128)
    adapter = {"type": "qlora", "target_modules": "all-linear"}
    _, run_dir, s = _train(tmp_path, model, tiny_data, "qlora", adapter=adapter, trainer={"max_steps": 5})
    assert s["status"] == "completed"
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()


def test_scores_are_the_models_own_loss(family):
    """The probe's NLL and label likelihoods equal the model's own loss, whatever the family does to its
    logits (Gemma 2 soft-caps them): weights scaled up so that capping matters."""
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM

    from retune.evaluate import scoring
    from retune.evaluate.forgetting import encode_plain
    from retune.models.load import load_tokenizer

    _, folder = family
    tok = load_tokenizer(str(folder))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(40)  # logits of tens: tanh(x / 30) * 30 is far from x
    text = "the film was truly superb and the plot moving"
    ex = encode_plain(tok, [text], 64)
    ids = torch.tensor([ex[0].input_ids])
    with torch.no_grad():
        ref = float(model(input_ids=ids, labels=ids).loss)
    assert scoring.mean_nll(model, ex, tok.pad_token_id, 4, contextlib.nullcontext) == pytest.approx(ref, abs=1e-4)
    prompt, label = ex[0].input_ids[:5], ex[0].input_ids[5:7]
    with torch.no_grad():
        whole = torch.tensor([prompt + label])
        want = -float(model(input_ids=whole, labels=torch.tensor([[-100] * 5 + label])).loss) * 2
        want1 = -float(model(input_ids=whole[:, :6], labels=torch.tensor([[-100] * 5 + label[:1]])).loss)
    got = scoring.label_loglik(model, [prompt], [label, label[:1]], tok.pad_token_id, 4, contextlib.nullcontext)
    assert got[0, 0].item() == pytest.approx(want, abs=1e-3) and got[0, 1].item() == pytest.approx(want1, abs=1e-3)
    single = scoring.label_loglik(model, [prompt], [label[:1], label[1:]], tok.pad_token_id, 4, contextlib.nullcontext)
    assert single[0, 0].item() == pytest.approx(want1, abs=1e-3)


def test_fast_paths_are_reported_per_family(family):
    """Said once per run: the lean layers that apply to the family, and whether the fused head does."""
    from transformers import AutoModelForCausalLM

    from retune.config import validate
    from retune.models.load import path_report, prepare_for_training

    name, folder = family
    cfg = validate({"model": {"base": str(folder)}, "adapter": {"type": "lora", "target_modules": "all-linear"}})
    model = AutoModelForCausalLM.from_pretrained(folder)
    report = path_report(prepare_for_training(model, cfg, bf16_autocast=False))
    assert report.startswith(model.config.model_type + ": "), report
    lean = name in ("llama", "mistral", "qwen2", "qwen3", "phi3")  # RMSNorm (and SwiGLU) classes models/lean.py knows
    assert ("rmsnorm x" in report) == lean and ("stock layers" in report) == (not lean), report
    assert ("stock head" in report) == (name == "gemma2"), report  # Gemma 2 soft-caps its logits in its own forward


@pytest.mark.parametrize("attention", ["sdpa", "eager", "lean"])
def test_shared_prefix_options_score_as_one_sequence_each(family, attention):
    """Cloze scoring with the prompt computed once (tree mask, restarted positions) equals one sequence
    per (prompt, option), in a batch of prompts and options of different lengths (padding inside)."""
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM

    from retune.evaluate import scoring, shared_prefix
    from retune.models import lean
    from retune.models.load import load_tokenizer

    name, folder = family
    tok = load_tokenizer(str(folder))
    if attention == "sdpa" and name == "gemma2":
        pytest.skip("transformers has no SDPA attention for Gemma 2")
    if attention == "lean" and name not in lean.ATTENTION_MODELS:
        pytest.skip("retune's lean attention is for the Llama-like families")
    if attention == "lean":
        attention = lean.register_attention()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation=attention).eval()
    enc = [tok.encode(t, add_special_tokens=False) for t in ("the film was superb and", "a dull plot", "review: the acting")]
    prompts = [enc[0], enc[1], enc[2] + enc[1]]
    options = [[enc[1], enc[2][:1], enc[0][:3]], [enc[0][:1], enc[2]], [enc[1][:2], enc[0], enc[2][:2], enc[1][:1]]]
    want = scoring.per_option_loglik(model, prompts, options, tok.pad_token_id, 4, contextlib.nullcontext)
    got = scoring.option_loglik(model, prompts, options, tok.pad_token_id, 2, contextlib.nullcontext, fp32=False)
    assert shared_prefix.supported(model) == (name in ("llama", "mistral", "qwen2", "qwen3", "phi3"))
    assert [len(g) for g in got] == [3, 2, 4]
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-4)
    # prompts that start alike (a chat template, a system prompt): the start runs once as a cache
    lead = enc[0] + enc[2] + enc[1]
    assert len(lead) >= shared_prefix.MIN_SHARED_PREFIX
    prompts = [lead + p for p in prompts]
    want = scoring.per_option_loglik(model, prompts, options, tok.pad_token_id, 4, contextlib.nullcontext)
    got = scoring.option_loglik(model, prompts, options, tok.pad_token_id, 3, contextlib.nullcontext, fp32=False)
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-4)


def test_packing_is_exact_in_every_family(family):
    """Each family keeps packed examples apart (the probe that turns data.packing on says so), and a
    packed batch has the padded batch's loss."""
    import torch
    from transformers import AutoModelForCausalLM

    from retune.data.batching import collate
    from retune.data.packing import isolates, packed_micro_batches
    from retune.data.templates import Encoded
    from retune.objectives import SFT

    _, folder = family
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    assert isolates(model)
    g = torch.Generator().manual_seed(0)
    examples = [
        Encoded(ids, [-100] * 3 + ids[3:], 3) for n in (9, 20, 5, 14, 30) for ids in [torch.randint(5, 300, (n,), generator=g).tolist()]
    ]
    with torch.no_grad():
        padded = SFT.loss(model, collate(examples, 0), 1.0)[0].item()
        packed = sum(SFT.loss(model, b, 1.0)[0].item() for b in packed_micro_batches(examples, 64, 8, 0))
    assert packed == pytest.approx(padded, rel=1e-5)


def test_frozen_head_sees_a_contiguous_input(family):
    """Generation's prefill slices the last position (a strided view); a frozen head over it must get a
    contiguous copy (torch otherwise expands its weight once per row: 905 MB per prefill on SmolLM2),
    and the last position's logits stay those of the whole-sequence forward."""
    import torch

    from retune.config import validate
    from retune.models.load import load_base

    _, folder = family
    model = load_base(validate({"model": {"base": str(folder), "dtype": "fp32"}}), str(folder)).eval().requires_grad_(False)
    seen: list[bool] = []
    model.get_output_embeddings().register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    ids = torch.randint(5, 300, (3, 12))
    with torch.no_grad():
        whole = model(input_ids=ids).logits[:, -1]
        last = model(input_ids=ids, logits_to_keep=1).logits[:, -1]
    assert seen == [True, True]
    torch.testing.assert_close(last, whole, rtol=1e-5, atol=1e-5)
