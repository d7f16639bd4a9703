"""One rule for special tokens (data/templates.py): every path starts a sequence as the tokenizer's own
`tok(text)` would, with a BOS where the tokenizer adds one; the probe's NLL is the model's own loss."""

from __future__ import annotations

import contextlib

import pytest
import torch

from retune.config import DataConfig, TemplateConfig
from retune.data.templates import Formatter, adds_bos, text_ids
from retune.evaluate.forgetting import encode_plain
from retune.evaluate.scoring import mean_nll

TEXTS = [
    "the film was a truly moving story and the actors were superb",
    "a dull plot and a bland script made the ending tedious",
    "charming and funny, the movie was brilliant",
]


def _tokenizer(bos: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS * 10, trainer)
    if bos:  # as Llama 2 / Gemma tokenizers do
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module", params=[True, False], ids=["bos", "no-bos"])
def tok(request):
    return _tokenizer(request.param)


@pytest.fixture(scope="module")
def model(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    )
    return LlamaForCausalLM(cfg).eval()


def test_adds_bos_reads_the_tokenizer(tok):
    assert adds_bos(tok) == (tok("a").input_ids[0] == tok.bos_token_id)
    assert text_ids(tok, TEXTS[0]) == tok(TEXTS[0]).input_ids
    assert text_ids(tok, TEXTS[0], chat=True) == tok(TEXTS[0], add_special_tokens=False).input_ids


def test_probe_ids_start_as_the_tokenizer_would(tok):
    for text, enc in zip(TEXTS, encode_plain(tok, TEXTS, 256), strict=True):
        assert enc.input_ids == tok(text).input_ids
    cut = encode_plain(tok, TEXTS[:1], 4)[0].input_ids
    assert cut == tok(TEXTS[0]).input_ids[:4]  # cut on the right: a BOS stays first


def test_probe_nll_is_the_models_own_loss(tok, model):
    for text in TEXTS:
        ids = torch.tensor([tok(text).input_ids])
        with torch.no_grad():
            hf = model(input_ids=ids, labels=ids).loss.item()
        probe = mean_nll(model, encode_plain(tok, [text], 256), tok.pad_token_id, 4, contextlib.nullcontext)
        assert probe == pytest.approx(hf, abs=1e-4)


def test_training_and_scoring_prompts_start_as_the_tokenizer_would(tok):
    fmt = Formatter(tok, DataConfig(format="plain", max_length=256))
    template = TemplateConfig(prompt="Review: {text}\nSentiment?", response="{label}")
    enc = fmt.encode_record(template, {"text": TEXTS[0], "label": "positive"}, "test")
    prompt = "Review: " + TEXTS[0] + "\nSentiment?"
    assert enc.input_ids[: enc.prompt_len] == tok(prompt).input_ids  # validation loss and training
    assert fmt.prompt_ids(prompt) == tok(prompt).input_ids  # label likelihood and generation prompts


def test_a_cut_prompt_keeps_the_bos(tok):
    fmt = Formatter(tok, DataConfig(format="plain", max_length=12))
    template = TemplateConfig(prompt="{text}", response="{label}")
    enc = fmt.encode_record(template, {"text": " ".join(TEXTS), "label": "positive"}, "test")
    full = tok(" ".join(TEXTS)).input_ids
    assert len(enc.input_ids) == 12
    if adds_bos(tok):
        assert enc.input_ids[0] == tok.bos_token_id and enc.input_ids[1 : enc.prompt_len] == full[len(full) - enc.prompt_len + 1 :]
    else:
        assert enc.input_ids[: enc.prompt_len] == full[len(full) - enc.prompt_len :]
