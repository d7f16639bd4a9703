"""retune serve on the tiny model: a real uvicorn server on 127.0.0.1, real HTTP clients (httpx, openai)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import socket
import threading
import time

import httpx
import openai
import pytest
from typer.testing import CliRunner

from conftest import tiny_config
from helpers import write_config
from retune.cli import app as cli_app
from retune.serve.app import Settings, create_app
from retune.serve.engine import Engine
from retune.serve.server import build_registry

PROMPT = [{"role": "user", "content": "Review: a truly great film\nSentiment?"}]


@contextlib.contextmanager
def running(app):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model, tiny_data):
    """Two LoRA runs of the tiny model (different seeds) in one folder: the adapter directory."""
    from retune.cli import run_train as train

    tmp = tmp_path_factory.mktemp("serve")
    out = []
    for seed in (1, 2):
        cfg = tiny_config(
            tiny_model, tiny_data, tmp / "runs", eval={"before": False}, output={"dir": str(tmp / "runs"), "name": f"s{seed}"}
        )
        cfg["trainer"].update(max_steps=3, lr=5e-2, seed=seed)
        run_dir, _ = train(str(write_config(tmp / f"c{seed}.yaml", cfg)))
        out.append(run_dir)
    return out


@pytest.fixture(scope="module")
def registry(runs):
    return build_registry(None, [f"a={runs[0]}"], adapter_dir=str(runs[0].parent))


@pytest.fixture(scope="module")
def url(registry):
    with running(create_app(registry, Engine(registry, max_batch=8, max_queue=256), Settings(max_tokens=64))) as u:
        yield u


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def test_health_and_models(url, registry):
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    ids = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
    assert ids == [registry.base_name, "a"]


def test_openai_client_chat_non_streaming_and_streaming_agree(client):
    r = client.chat.completions.create(model="a", messages=PROMPT, max_tokens=8, temperature=0)
    text = r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens >= 1
    chunks = list(client.chat.completions.create(model="a", messages=PROMPT, max_tokens=8, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason


def test_openai_client_completions(client, registry):
    r = client.completions.create(model=registry.base_name, prompt="the film was", max_tokens=6, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model=registry.base_name, prompt="the film was", max_tokens=6, temperature=0, stream=True)
    )
    assert streamed == r.choices[0].text


def test_adapter_output_equals_the_run_generating_alone(client, runs):
    """The served adapter computes what `retune generate` on that run computes (greedy)."""
    from contextlib import nullcontext

    from retune.data.templates import Formatter
    from retune.evaluate.scoring import generate
    from retune.session import load_run

    cfg, model, tok = load_run(runs[0])
    fmt = Formatter(tok, cfg.data)
    want = generate(model, tok, [fmt.prompt_text("", messages=PROMPT)], 10, 1, nullcontext, do_sample=False, min_new_tokens=10)[0]
    r = client.chat.completions.create(model="a", messages=PROMPT, max_tokens=10, temperature=0)
    assert r.choices[0].message.content.strip() == want


def test_concurrent_requests_are_batched_and_match_sequential(url, client, registry):
    prompts = [f"Review: {w} film\nSentiment?" for w in ("great", "dull", "the plot was boring and", "a")]
    alone = [client.completions.create(model="a", prompt=p, max_tokens=6, temperature=0).choices[0].text for p in prompts]
    before = registry and httpx.get(f"{url}/health").json()["batches"]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futs = [pool.submit(client.completions.create, model="a", prompt=prompts[i % 4], max_tokens=6, temperature=0) for i in range(16)]
        together = [f.result().choices[0].text for f in futs]
    assert together == [alone[i % 4] for i in range(16)]  # left padding in a batch changes nothing
    assert httpx.get(f"{url}/health").json()["batches"] - before < 16  # some requests shared a batch


@pytest.mark.parametrize(
    "body, status, needle",
    [
        ('{"model": "a", "messages": [', 400, "not valid JSON"),
        ('{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}', 404, "model 'nope' does not exist"),
        ('{"model": "a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}', 400, "over this server's limit"),
        ('{"model": "a", "messages": []}', 400, "messages"),
        ('{"model": "a"}', 400, "messages"),
        ('{"model": "a", "messages": [{"role": "wizard", "content": "hi"}]}', 400, "role"),
        ('{"model": "a", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', 400, "temperature"),
        ('{"model": "a", "messages": [{"role": "user", "content": "hi"}], "n": 3}', 400, "n"),
        ('{"model": "a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', 400, "max_tokens"),
        ("[1, 2]", 400, "body"),
    ],
)
def test_malformed_chat_requests_get_4xx_json(url, body, status, needle):
    r = httpx.post(f"{url}/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]


def test_other_malformed_requests(url):
    post = lambda path, **kw: httpx.post(f"{url}{path}", **kw)  # noqa: E731
    assert post("/v1/completions", json={"model": "a", "prompt": ""}).status_code == 400
    assert post("/v1/completions", json={"model": "a", "prompt": ["x", "y"]}).status_code == 400
    assert post("/v1/completions", json={"model": "a", "prompt": "x " * 600, "max_tokens": 64}).status_code == 400  # over the context
    assert post("/v1/chat/completions", content=b"x" * (2 << 20)).status_code == 413
    assert httpx.get(f"{url}/v1/nothing").status_code == 404
    assert httpx.get(f"{url}/v1/chat/completions").status_code == 405
    assert "error" in httpx.get(f"{url}/v1/nothing").json()


def test_adapters_added_and_removed_without_restart(url, client, runs):
    add = lambda body: httpx.post(f"{url}/v1/adapters", json=body)  # noqa: E731
    assert add({"name": "b", "run": runs[1].name}).status_code == 201
    assert "b" in [m.id for m in client.models.list().data]
    assert client.chat.completions.create(model="b", messages=PROMPT, max_tokens=4, temperature=0).choices[0].message.content is not None
    # paths in request data are never used: only names listed in --adapter-dir match
    for run in (str(runs[1]), f"../{runs[1].parent.name}/{runs[1].name}", "..", "/etc"):
        assert add({"name": "c", "run": run}).status_code == 404
    assert add({"name": "b", "run": runs[1].name}).status_code == 409
    assert add({"name": "bad.name", "run": runs[1].name}).status_code == 400
    assert httpx.delete(f"{url}/v1/adapters/b").status_code == 200
    assert httpx.delete(f"{url}/v1/adapters/b").status_code == 404
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="b", messages=PROMPT, max_tokens=4)
    assert client.chat.completions.create(model="a", messages=PROMPT, max_tokens=4, temperature=0).choices[0].message.content is not None


def test_api_key(registry):
    app = create_app(registry, Engine(registry), Settings(api_key="s3cret"))
    with running(app) as url:
        assert httpx.get(f"{url}/health").status_code == 200
        assert httpx.get(f"{url}/v1/models").status_code == 401
        assert httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.post(f"{url}/v1/adapters", json={"name": "x", "run": "y"}).status_code == 401
        good = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        assert good.chat.completions.create(model="a", messages=PROMPT, max_tokens=2).choices


class _CountingEngine(Engine):
    """An Engine that counts accepted requests, so a test can wait for a state instead of sleeping."""

    submitted = 0

    def submit(self, job) -> None:
        super().submit(job)
        self.submitted += 1


def _wait_for(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def test_full_queue_is_429_and_slow_request_is_504(registry):
    engine = _CountingEngine(registry, max_queue=1)
    app = create_app(registry, engine, Settings(timeout_s=1.0))
    body = {"model": "a", "messages": PROMPT, "max_tokens": 2}
    with running(app) as url, concurrent.futures.ThreadPoolExecutor(2) as pool:
        with registry.lock:  # the worker blocks on the model: requests pile up
            first = pool.submit(httpx.post, f"{url}/v1/chat/completions", json=body, timeout=30)
            _wait_for(lambda: engine.submitted == 1 and engine.queued() == 0, "the worker took the first request")
            second = pool.submit(httpx.post, f"{url}/v1/chat/completions", json=body, timeout=30)
            _wait_for(lambda: engine.queued() == 1, "the second request waits in the queue (1 place)")
            third = httpx.post(f"{url}/v1/chat/completions", json=body)
            assert third.status_code == 429 and third.json()["error"]["type"] == "rate_limit_error"
            assert first.result().status_code == 504
        assert second.result().status_code in (200, 504)


def test_serve_cli_bad_input_is_one_line(tmp_path):
    runner = CliRunner()
    for args, needle in (
        (["--adapter", "oops"], "use NAME=RUN_DIR"),
        (["--adapter", f"x={tmp_path}"], "not a run directory"),
        ([], "--base"),
    ):
        result = runner.invoke(cli_app, ["serve", *args])
        assert result.exit_code == 2, result.output
        assert len(result.stderr.strip().splitlines()) == 1 and needle in result.stderr


def test_chat_keeps_history(runs):
    from retune.inference.chat import chat_loop

    lines = iter(["hello", "a great film", "/reset", "again", "/exit"])
    out: list[str] = []
    history = chat_loop(str(runs[0]), read=lambda _: next(lines), write=out.append, max_new_tokens=3)
    assert [m["content"] for m in history if m["role"] == "user"] == ["again"]
    assert sum(o.startswith("assistant> ") for o in out) == 3 and "(history cleared)" in out


@pytest.mark.slow
def test_serves_the_builtin_smollm2():
    reg = build_registry("smollm2-135m-instruct", [])
    with running(create_app(reg, Engine(reg))) as url:
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        msgs = [{"role": "user", "content": "What is the capital of France?"}]
        r = c.chat.completions.create(model="smollm2-135m-instruct", messages=msgs, max_tokens=8, temperature=0)
        assert r.choices[0].message.content.strip()
