"""A byte-level BPE tokenizer as GGUF metadata, as llama.cpp's convert_hf_to_gguf.py writes it (`_set_vocab_gpt2`).

llama.cpp re-implements each pre-tokenizer (the regex split before BPE) and picks it by name
(tokenizer.ggml.pre). The converter names it by hashing the token ids of a fixed text; the hashes of the
families retune exports are copied here. A tokenizer whose hash is unknown but whose pre-tokenizer is plain
GPT-2 ByteLevel (regex on) gets "gpt-2", which is that same split; any other is refused with one line, since a
wrong name tokenizes differently in llama.cpp without any error.
"""

from __future__ import annotations

import json
from hashlib import sha256
from pathlib import Path
from typing import Any

from retune.errors import UsageError

# the converter's probe text (get_vocab_base_pre) and the hashes of its ids for the families exported here
CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 "
    "33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? "
    "We'Ve a'lL"
)
KNOWN_PRE = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # HuggingFaceTB/SmolLM(2)
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # meta-llama/Meta-Llama-3-8B
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # openai-community/gpt2
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen/Qwen3-Embedding-0.6B
}
TOKEN_NORMAL, TOKEN_UNUSED, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 5, 3, 4  # gguf.TokenType


def pre_tokenizer(tok: Any, folder: Path) -> str:
    """llama.cpp's name for this tokenizer's pre-tokenizer."""
    chkhsh = sha256(str(tok.encode(CHKTXT)).encode()).hexdigest()
    if chkhsh in KNOWN_PRE:
        return KNOWN_PRE[chkhsh]
    spec = json.loads((folder / "tokenizer.json").read_text()).get("pre_tokenizer") or {}
    if spec.get("type") == "ByteLevel" and spec.get("use_regex", True):
        return "gpt-2"
    raise UsageError(
        f"{folder}: llama.cpp has no pre-tokenizer known to match this tokenizer (hash {chkhsh[:12]}); "
        "GGUF export supports the SmolLM, Llama-3, Qwen2 and GPT-2 byte-level BPE tokenizers"
    )


def _looks_special(token: str) -> bool:
    # the converter's does_token_look_special: some models mark control tokens as not special
    return token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (token.startswith("<|") and token.endswith("|>"))


def vocab(tok: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """(tokens, token types) padded to the model's vocab size, as the converter's get_vocab_base."""
    reverse = {i: t for t, i in tok.vocab.items()}
    added = tok.get_added_vocab()
    decoder = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(TOKEN_UNUSED)
            continue
        token = reverse[i]
        if token in added:
            if not decoder[i].normalized:
                token = tok.decode(tok.encode(token, add_special_tokens=False))
            if decoder[i].special or _looks_special(token):
                types.append(TOKEN_CONTROL)
            else:
                token = token.replace("\u2581", " ")
                types.append(TOKEN_USER_DEFINED)
        else:
            types.append(TOKEN_NORMAL)
        tokens.append(token)
    return tokens, types


def add_tokenizer(writer: Any, folder: Path, vocab_size: int) -> None:
    """Write tokenizer.ggml.* and tokenizer.chat_template for the HF tokenizer saved in `folder`."""
    import gguf
    from transformers import AutoTokenizer

    if not (folder / "tokenizer.json").exists():
        raise UsageError(f"{folder}: GGUF export needs a fast tokenizer (tokenizer.json); SentencePiece-only tokenizers are not supported")
    tok = AutoTokenizer.from_pretrained(folder)
    model = json.loads((folder / "tokenizer.json").read_text()).get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise UsageError(f"{folder}: GGUF export supports byte-level BPE tokenizers; this one is {model.get('type')} (SentencePiece-style)")
    tokens, types = vocab(tok, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer(tok, folder))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(folder, load_merges=True).add_to_gguf(writer)
