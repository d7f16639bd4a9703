"""The generation worker: a bounded queue, one thread that owns the model, and batching of compatible requests.

Requests are jobs. The HTTP side submits them (429 when the queue is full) and reads their text as it
is produced; one worker thread takes the oldest job plus every queued job that asks for the same
model and sampling settings (up to max_batch), and runs one batched `generate` for them. Each row stops
on its own (its max_tokens, EOS, a stop string, its deadline, or a client that went away) through a
per-row stopping criterion, and the whole batch stops when every row has.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from retune.serve.registry import Registry


class QueueFull(Exception):
    """The bounded queue is full (HTTP 429)."""


@dataclass
class Job:
    model: str
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    deadline: float = float("inf")  # time.monotonic() after which the row is abandoned
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue | None = None  # ("text", str) ... then ("done", finish_reason) or ("error", exc)
    cancelled: bool = False
    # worker-side state
    ids: list[int] = field(default_factory=list)
    sent: str = ""
    finish: str | None = None

    def key(self) -> tuple:
        sampling = (self.temperature, self.top_p) if self.temperature > 0 else (0.0, 1.0)
        return (self.model, *sampling)

    def emit(self, *event: Any) -> None:
        if self.loop is not None and self.events is not None:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def completion_tokens(self) -> int:
        return len(self.ids)


class Engine:
    def __init__(self, registry: Registry, max_batch: int = 8, max_queue: int = 128):
        self.registry = registry
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.pending: collections.deque[Job] = collections.deque()
        self.cond = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="retune-generate", daemon=True)
        self.batches = 0  # statistics for /health
        self.batched_jobs = 0

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.thread.join(timeout=10)

    def queued(self) -> int:
        return len(self.pending)

    def submit(self, job: Job) -> None:
        with self.cond:
            if len(self.pending) >= self.max_queue:
                raise QueueFull(f"the server's queue is full ({self.max_queue} requests waiting); retry later")
            self.pending.append(job)
            self.cond.notify()

    # -- worker
    def _take(self) -> list[Job]:
        with self.cond:
            while not self.pending and not self.stopping:
                self.cond.wait()
            if self.stopping:
                return []
            first = self.pending.popleft()
            batch = [first]
            rest: collections.deque[Job] = collections.deque()
            while self.pending:
                job = self.pending.popleft()
                (batch if job.key() == first.key() and len(batch) < self.max_batch else rest).append(job)
            self.pending = rest
        return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return
            now = time.monotonic()
            for job in batch:
                if job.cancelled or now > job.deadline:
                    job.emit("done", "timeout")
            live = [j for j in batch if not (j.cancelled or now > j.deadline)]
            if not live:
                continue
            try:
                self._generate(live)
            except Exception as e:  # one bad batch fails its own requests, never the worker
                for job in live:
                    job.emit("error", e)
                continue
            for job in live:
                job.emit("done", job.finish or "length")

    @torch.inference_mode()
    def _generate(self, batch: list[Job]) -> None:
        reg = self.registry
        tok = reg.tok
        pad = tok.pad_token_id
        width = max(len(j.prompt_ids) for j in batch)
        # left padding: every row's next token is appended at the same position
        input_ids = torch.tensor([[pad] * (width - len(j.prompt_ids)) + j.prompt_ids for j in batch])
        attention = torch.tensor([[0] * (width - len(j.prompt_ids)) + [1] * len(j.prompt_ids) for j in batch])
        first = batch[0]
        sampling = (
            {"do_sample": True, "temperature": first.temperature, "top_p": first.top_p} if first.temperature > 0 else {"do_sample": False}
        )
        rows = Rows(batch, tok, _eos_ids(reg.model, tok))
        with reg.lock:
            reg.get(first.model)  # removed while queued: NotFound, reported to these requests
            with reg.activate(first.model):
                reg.model.generate(
                    input_ids=input_ids,
                    attention_mask=attention,
                    max_new_tokens=max(j.max_tokens for j in batch),
                    pad_token_id=pad,
                    streamer=rows,
                    stopping_criteria=[rows],
                    **sampling,
                )
        self.batches += 1
        self.batched_jobs += len(batch)


def _eos_ids(model: Any, tok: Any) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    return ids


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that is the beginning of a stop string."""
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


class Rows:
    """Streamer and per-row stopping criterion in one: turns each step's tokens into text per job (EOS, stop
    strings, max_tokens, deadline). The llama.cpp engine (serve/gguf.py) feeds it through `step`."""

    def __init__(self, batch: list[Job], tok: Any, eos: set[int]):
        self.batch, self.tok, self.eos = batch, tok, eos
        self.seen_prompt = False

    # streamer interface: put(prompt ids), then put(next tokens (B,)) once per step, then end()
    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        self.step(value.view(-1).tolist())

    def step(self, tokens: list[int]) -> None:
        """One generation step: the next token of every row (a finished row's is ignored)."""
        now = time.monotonic()
        for job, token in zip(self.batch, tokens, strict=True):
            if job.finish is not None:
                continue
            if job.cancelled or now > job.deadline:
                job.finish = "timeout"
            elif token in self.eos:
                job.finish = "stop"
            else:
                job.ids.append(token)
                self._emit_text(job)
                if job.finish is None and len(job.ids) >= job.max_tokens:
                    job.finish = "length"

    def _emit_text(self, job: Job) -> None:
        text = self.tok.decode(job.ids, skip_special_tokens=True)
        for s in job.stop:
            at = text.find(s)
            if at >= 0:
                text, job.finish = text[:at], "stop"
        if job.finish is None:
            if text.endswith("\ufffd"):
                return  # half of a multi-byte character: wait for the rest
            text = text[: len(text) - _held_back(text, job.stop)]  # may be the start of a stop string
        if len(text) > len(job.sent) and text.startswith(job.sent):
            job.emit("text", text[len(job.sent) :])
            job.sent = text

    def end(self) -> None:
        pass

    # stopping criterion: a bool per row; generate stops the batch when all are True
    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return torch.tensor([j.finish is not None for j in self.batch], dtype=torch.bool, device=input_ids.device)
