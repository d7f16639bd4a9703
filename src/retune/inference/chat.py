"""`retune chat RUN`: a terminal chat with history, rendered with the chat template the run was trained with."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from retune.data.templates import Formatter

HELP = "commands: /reset clears the history, /exit (or Ctrl-D) quits"


def chat_loop(
    target: str,
    read: Callable[[str], str] = input,
    write: Callable[[str], None] = print,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    system: str | None = None,
) -> list[dict]:
    """Read a line, answer it with the whole conversation as context, repeat; returns the history."""
    from retune.data.templates import Formatter, text_ids
    from retune.evaluate.scoring import generate
    from retune.inference.tuned import load_target
    from retune.session import make_accelerator

    cfg, model, tok = load_target(target)  # a run directory, or a base model to chat with
    fmt = Formatter(tok, cfg.data)
    autocast = make_accelerator(cfg).autocast
    start = [{"role": "system", "content": system}] if system else []
    history = list(start)
    write(HELP)
    while True:
        try:
            line = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            write("")
            return history
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return history
        if line == "/reset":
            history = list(start)
            write("(history cleared)")
            continue
        history.append({"role": "user", "content": line})
        prompt = _prompt(fmt, history)
        context = int(getattr(model.config, "max_position_embeddings", 2048))
        while len(text_ids(tok, prompt, fmt.chat)) + max_new_tokens > context and len(history) > len(start) + 1:
            del history[len(start) : len(start) + 2]  # forget the oldest exchange, keep the system prompt
            prompt = _prompt(fmt, history)
        reply = generate(model, tok, [prompt], max_new_tokens, 1, autocast, add_special_tokens=not fmt.chat, temperature=temperature)[0]
        history.append({"role": "assistant", "content": reply})
        write(f"assistant> {reply}")


def _prompt(fmt: Formatter, history: list[dict]) -> str:
    if fmt.chat:
        return fmt.prompt_text("", messages=history)
    return "\n".join(m["content"] for m in history)  # a plain-format run: the conversation as text
