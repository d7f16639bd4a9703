"""An Ollama Modelfile for an exported GGUF: FROM, a TEMPLATE translated from the tokenizer's chat template, stops.

Ollama renders prompts with Go's text/template, not Jinja, so the Jinja template cannot be copied. It is
translated by rendering it (through transformers) on conversations whose contents are unique markers and
reading off what each role puts before and after its content; "gibberish in Ollama" reports come from a
template that differs from the one the model was tuned on, so the pieces are checked: re-assembled they must
reproduce transformers' rendering of a longer conversation exactly, or the export stops with one line.
A default system prompt that the Jinja template inserts (SmolLM2 does) becomes SYSTEM, which Ollama sends as
the first message; the run's own system prompt (data.system) takes its place when it has one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retune.errors import UsageError

MARK = {"system": "\x01SYSTEM\x01", "user": "\x01USER1\x01", "assistant": "\x01ASSISTANT\x01", "user2": "\x01USER2\x01"}


@dataclass(frozen=True)
class Turns:
    """What the chat template writes around each role's content."""

    lead: str  # before the first message (a BOS written as text)
    system: tuple[str, str] | None  # (before, after) a system message; None: the template has no system role
    user: tuple[str, str]
    assistant: tuple[str, str]
    default_system: str | None  # inserted by the template when the conversation has no system message


def _render(tok: Any, messages: list[dict], gen: bool) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


def _between(text: str, a: str, b: str) -> str:
    return text[text.index(a) + len(a) : text.index(b)]


def _cut(text: str, suffix: str, what: str) -> str:
    if not text.endswith(suffix):
        raise UsageError(f"the chat template's {what} has a shape the Ollama translation does not follow; write TEMPLATE by hand")
    return text[: len(text) - len(suffix)]


def turns(tok: Any) -> Turns:
    """Read the per-role pieces off transformers' rendering of marker conversations."""
    u1, a1, u2, s = (
        {"role": r, "content": MARK[k]} for r, k in [("user", "user"), ("assistant", "assistant"), ("user", "user2"), ("system", "system")]
    )
    if getattr(tok, "chat_template", None) is None:
        raise UsageError("the tokenizer has no chat template, so there is no prompt format to give Ollama")
    three = _render(tok, [u1, a1, u2], gen=True)
    one, one_gen = _render(tok, [u1], gen=False), _render(tok, [u1], gen=True)
    gen = one_gen[len(one) :]
    role = next((r for r in ("assistant", "model") if r in gen), None)
    if role is None or not one_gen.startswith(one):
        raise UsageError("the chat template's generation prompt does not name the assistant; write TEMPLATE by hand")
    u_pre = gen.replace(role, "user")
    head, after_u1 = three[: three.index(MARK["user"])], _between(three, MARK["user"], MARK["assistant"])
    u_suf = _cut(after_u1, gen, "user turn")
    a_suf = _cut(_between(three, MARK["assistant"], MARK["user2"]), u_pre, "assistant turn")
    lead_and_default = _cut(head, u_pre, "first turn")
    system = None
    default = None
    try:
        with_sys = _render(tok, [s, u1], gen=False)
    except Exception:  # templates without a system role raise (Gemma's raise_exception)
        with_sys = None
    lead = lead_and_default
    if with_sys is not None and MARK["system"] in with_sys:
        s_pre = u_pre.replace("user", "system")
        lead = _cut(with_sys[: with_sys.index(MARK["system"])], s_pre, "system turn")
        system = (s_pre, _cut(_between(with_sys, MARK["system"], MARK["user"]), u_pre, "system turn"))
        block = lead_and_default[len(lead) :]
        if block:  # the template inserts a system message of its own
            default = _cut(block.removeprefix(s_pre), system[1], "default system prompt") if block.startswith(s_pre) else None
            if default is None:
                raise UsageError("the chat template's default system prompt could not be read off; write TEMPLATE by hand")
    return Turns(lead, system, (u_pre, u_suf), (gen, a_suf), default)


def assemble(t: Turns, messages: list[dict], gen: bool = True) -> str:
    """The prompt the Go template below renders (Ollama's semantics: an assistant message last is continued)."""
    out = t.lead
    for i, m in enumerate(messages):
        last = i == len(messages) - 1
        pre, suf = {"system": t.system, "user": t.user, "assistant": t.assistant}[m["role"]] or ("", "")
        out += pre + m["content"] + (suf if not (last and m["role"] == "assistant") else "")
        if last and m["role"] == "user" and gen:
            out += t.assistant[0]
    return out


def go_template(t: Turns) -> str:
    """Ollama's TEMPLATE (Go text/template over .Messages) for these turns; no trim markers, so every byte stays."""
    pieces = [t.lead, *(t.system or ("", "")), *t.user, *t.assistant]
    if any("{{" in p or "}}" in p for p in pieces):
        raise UsageError("the chat template writes '{{' or '}}', which a Go template cannot hold as text; write TEMPLATE by hand")
    system = f'{{{{ if eq .Role "system" }}}}{t.system[0]}{{{{ .Content }}}}{t.system[1]}{{{{ else }}}}' if t.system else ""
    return (
        f"{t.lead}{{{{ range $i, $_ := .Messages }}}}{{{{ $last := eq (len (slice $.Messages $i)) 1 }}}}{system}"
        f'{{{{ if eq .Role "user" }}}}{t.user[0]}{{{{ .Content }}}}{t.user[1]}{{{{ if $last }}}}{t.assistant[0]}{{{{ end }}}}'
        f'{{{{ else if eq .Role "assistant" }}}}{t.assistant[0]}{{{{ .Content }}}}{{{{ if not $last }}}}{t.assistant[1]}{{{{ end }}}}'
        f"{{{{ end }}}}{'{{ end }}' if t.system else ''}{{{{ end }}}}"
    )


def _check(tok: Any, t: Turns, system: str | None) -> None:
    """Re-assembled pieces must equal transformers' rendering of a longer conversation, byte for byte."""
    conv = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}]
    sys_msg = [{"role": "system", "content": system}] if system and t.system else []
    want = _render(tok, sys_msg + conv, gen=True)
    default = [{"role": "system", "content": t.default_system}] if t.default_system and not sys_msg else []
    if assemble(t, sys_msg + default + conv) != want:
        raise UsageError("the chat template's translation to an Ollama TEMPLATE does not reproduce it; write TEMPLATE by hand")


def modelfile(tok: Any, gguf_name: str, system: str | None = None) -> str:
    import dataclasses

    t = turns(tok)
    _check(tok, t, system)
    if t.lead and t.lead == tok.bos_token and tok("x")["input_ids"][:1] == [tok.bos_token_id]:
        t = dataclasses.replace(t, lead="")  # llama.cpp adds the BOS itself (tokenizer.ggml.add_bos_token)
    if system and t.system is None:
        raise UsageError("the run has a system prompt but its chat template has no system role; Ollama would drop it")
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{go_template(t)}"""']
    sys_text = system or t.default_system
    if sys_text:
        lines.append(f'SYSTEM """{sys_text}"""')
    stops = [tok.eos_token] + ([t.assistant[1].strip()] if t.assistant[1].strip() not in ("", tok.eos_token) else [])
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stops if s]
    return "\n".join(lines) + "\n"


def write_modelfile(tok: Any, gguf_path: Path, system: str | None = None) -> Path:
    from retune.io import write_text

    out = gguf_path.parent / "Modelfile"
    write_text(out, modelfile(tok, gguf_path.name, system))
    return out
