"""The Ollama Modelfile's TEMPLATE, rendered by Go's real text/template (tests/go/render.go, as Ollama renders it),
gives the prompt that the tokenizer's Jinja chat template gives through transformers: for the built-in SmolLM2
(ChatML with a default system prompt), a Llama-3-style and a Gemma-style template (no system role)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from retune.errors import UsageError
from retune.export.modelfile import modelfile

GO = Path(__file__).parent / "go" / "render.go"
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + m['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
CONVERSATIONS = [
    [{"role": "user", "content": "Hello"}],
    [
        {"role": "user", "content": "Is this review positive?\n\nA warm, funny film."},
        {"role": "assistant", "content": "positive"},
        {"role": "user", "content": "And: dull."},
    ],
    [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
        {"role": "user", "content": "e"},
    ],
]


@pytest.fixture(scope="module")
def go_render(tmp_path_factory):
    if shutil.which("go") is None:
        pytest.skip("no Go toolchain (apt-get install golang-go; the Makefile installs it)")
    d = tmp_path_factory.mktemp("go")
    shutil.copy(GO, d / "render.go")
    env = {
        "GOCACHE": str(d / "cache"),
        "GOPATH": str(d / "gopath"),
        "HOME": str(d),
        "PATH": "/usr/bin:/bin:/usr/local/bin",
        "GOFLAGS": "-mod=mod",
    }
    subprocess.run(["go", "mod", "init", "render"], cwd=d, env=env, check=True, capture_output=True)
    subprocess.run(["go", "build", "-o", "render", "."], cwd=d, env=env, check=True, capture_output=True)

    def render(template: str, messages: list[dict]) -> str:
        out = subprocess.run(
            [str(d / "render")], input=json.dumps({"template": template, "messages": messages}), capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    return render


def _parse(text: str) -> tuple[str, str | None, list[str]]:
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.S)
    system = re.search(r'SYSTEM """(.*?)"""', text, re.S)
    assert template and text.startswith("FROM ./model.gguf\n")
    return template.group(1), system.group(1) if system else None, re.findall(r"PARAMETER stop (.+)", text)


def _tokenizer(tiny_model, template):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = template
    return tok


def _check(tok, go_render, system: str | None = None, bos: str = "") -> tuple[str | None, list[str]]:
    template, sys_text, stops = _parse(modelfile(tok, "model.gguf", system))
    for conv in CONVERSATIONS:
        want = tok.apply_chat_template(
            ([{"role": "system", "content": system}] if system else []) + conv, tokenize=False, add_generation_prompt=True
        )
        sent = ([{"role": "system", "content": sys_text}] if sys_text else []) + conv  # Ollama sends SYSTEM as the first message
        assert bos + go_render(template, sent) == want
    return sys_text, [json.loads(s) for s in stops]


def test_builtin_smollm2_chatml_with_default_system(go_render):
    from transformers import AutoTokenizer

    from retune.models.builtin import builtin_model_dir

    tok = AutoTokenizer.from_pretrained(builtin_model_dir("smollm2-135m-instruct"))
    sys_text, stops = _check(tok, go_render)
    assert sys_text == "You are a helpful AI assistant named SmolLM, trained by Hugging Face" and stops == ["<|im_end|>"]
    sys_text, _ = _check(tok, go_render, system="Answer in one word.")  # the run's own system prompt replaces it
    assert sys_text == "Answer in one word."


def test_llama3_style(tiny_model, go_render):
    tok = _tokenizer(tiny_model, LLAMA3)  # the tiny tokenizer adds no BOS itself, so the template keeps it as text
    sys_text, stops = _check(tok, go_render)
    assert sys_text is None and "<|eot_id|>" in stops
    _check(tok, go_render, system="Be brief.")


def test_gemma_style_without_system_role(tiny_model, go_render):
    tok = _tokenizer(tiny_model, GEMMA)
    sys_text, stops = _check(tok, go_render)
    assert sys_text is None and "<end_of_turn>" in stops
    with pytest.raises(UsageError, match="no system role"):
        modelfile(tok, "model.gguf", system="Be brief.")


def test_untranslatable_template_is_refused(tiny_model):
    odd = "{% for m in messages %}{{ m['content'] }}{% if loop.index0 == 1 %}!!{% endif %}{% endfor %}"
    odd += "{% if add_generation_prompt %}>{% endif %}"
    with pytest.raises(UsageError):
        modelfile(_tokenizer(tiny_model, odd), "model.gguf")
