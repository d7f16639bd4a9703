"""retune serve --gguf: a tiny LoRA run exported to GGUF, served through llama.cpp by the same app, answers as the
torch server on the same run does and as `retune generate` does (greedy), streams the same text, and refuses
bad requests the same way."""

from __future__ import annotations

import httpx
import openai
import pytest
from typer.testing import CliRunner

from conftest import tiny_config
from helpers import write_config
from retune.cli import app as cli_app
from retune.serve.app import Settings, create_app
from retune.serve.server import build_registry, make_engine
from test_serve import running

PROMPTS = ["Review: a truly great film", "the plot was dull", "Sentiment?", "actors and story", "superb ending", "boring movie"]

try:
    import llama_cpp
except ImportError:
    llama_cpp = None
needs_llama = pytest.mark.skipif(llama_cpp is None, reason="llama-cpp-python is not installed (make llamacpp builds it once)")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model, tiny_data):
    """A tiny LoRA run, with its f16 export at RUN/gguf/ (where `retune export RUN --gguf f16` writes it)."""
    from retune.cli import run_train
    from retune.export.run import export_run

    tmp = tmp_path_factory.mktemp("serve-gguf")
    cfg = tiny_config(tiny_model, tiny_data, tmp / "runs", eval={"before": False})
    cfg["trainer"].update(max_steps=3, lr=5e-2)  # a visible update, so the export differs from the base
    run_dir = run_train(str(write_config(tmp / "c.yaml", cfg)))[0]
    if llama_cpp is not None:
        export_run(run_dir, "f16")
    return run_dir


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def servers(run):
    """(llama.cpp server, torch server) on the same run: the GGUF export, and the base + the run's adapter."""
    from retune.serve.gguf import GgufRegistry

    if llama_cpp is None:
        pytest.skip("llama-cpp-python is not installed (make llamacpp builds it once)")
    gguf, torch_reg = GgufRegistry(run, threads=1), build_registry(None, [f"a={run}"])
    settings = Settings(max_tokens=64)
    with (
        running(create_app(gguf, make_engine(gguf, 8, 64), settings)) as g,
        running(create_app(torch_reg, make_engine(torch_reg, 8, 64), settings)) as t,
    ):
        yield (_client(g), gguf.base_name), (_client(t), "a")
    gguf.close()


def _chat(server, prompt: str, **kw):
    client, model = server
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], temperature=0, **kw)


@needs_llama
def test_chat_is_retune_generate_and_the_torch_server(servers, run):
    """Greedy chat through llama.cpp: the text `retune generate` gives (64 tokens), and the torch server's whole
    answer (text, finish reason, token counts)."""
    from retune.inference.tuned import generate_text

    gguf, torch_server = servers
    for prompt in PROMPTS:
        r, t = _chat(gguf, prompt, max_tokens=64), _chat(torch_server, prompt, max_tokens=64)
        assert r.choices[0].message.content.strip() == generate_text(str(run), prompt, 64), prompt
        assert (r.choices[0].message.content, r.choices[0].finish_reason) == (t.choices[0].message.content, t.choices[0].finish_reason)
        assert r.usage.model_dump() == t.usage.model_dump()


@needs_llama
def test_completions_and_streaming_match(servers):
    (gguf, name), (torch_client, _) = servers
    for prompt in PROMPTS[:3]:
        r = gguf.completions.create(model=name, prompt=prompt, max_tokens=12, temperature=0)
        t = torch_client.completions.create(model="a", prompt=prompt, max_tokens=12, temperature=0)
        assert (r.choices[0].text, r.choices[0].finish_reason, r.usage.completion_tokens) == (
            t.choices[0].text,
            t.choices[0].finish_reason,
            t.usage.completion_tokens,
        )
        streamed = gguf.completions.create(model=name, prompt=prompt, max_tokens=12, temperature=0, stream=True)
        assert "".join(c.choices[0].text for c in streamed) == r.choices[0].text
    whole = _chat(servers[0], PROMPTS[0], max_tokens=32)
    chunks = list(_chat(servers[0], PROMPTS[0], max_tokens=32, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


@needs_llama
def test_stop_strings_cut_as_the_torch_server_does(servers):
    texts = {p: _chat(servers[0], p, max_tokens=32).choices[0].message.content for p in PROMPTS}
    prompt, text = max(texts.items(), key=lambda kv: len(kv[1]))
    assert len(text) >= 6, texts
    stop = text[3:6]
    r, t = _chat(servers[0], prompt, max_tokens=32, stop=[stop]), _chat(servers[1], prompt, max_tokens=32, stop=[stop])
    assert r.choices[0].message.content == text[: text.find(stop)] == t.choices[0].message.content
    assert r.choices[0].finish_reason == "stop" == t.choices[0].finish_reason


@needs_llama
def test_bad_requests_answered_as_the_torch_server_does(servers):
    (gguf, name), (torch_client, _) = servers
    urls = {"gguf": str(gguf.base_url).removesuffix("/v1/"), "torch": str(torch_client.base_url).removesuffix("/v1/")}
    bodies = [
        ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/chat/completions", {"model": "M", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}),
        ("/v1/chat/completions", {"model": "M", "messages": []}),
        ("/v1/completions", {"model": "M", "prompt": ""}),
        ("/v1/completions", {"model": "M", "prompt": "x " * 600, "max_tokens": 64}),  # over the context (512)
    ]
    for path, body in bodies:
        got = {}
        for kind, url in urls.items():
            model = name if kind == "gguf" else "a"
            r = httpx.post(f"{url}{path}", json={**body, "model": body["model"].replace("M", model)})
            got[kind] = (r.status_code, r.json()["error"]["type"])
        assert got["gguf"] == got["torch"] and 400 <= got["gguf"][0] < 500, (path, body, got)
    assert httpx.post(f"{urls['gguf']}/v1/adapters", json={"name": "b", "run": "x"}).status_code == 400  # no --adapter-dir
    r = httpx.delete(f"{urls['gguf']}/v1/adapters/{name}")
    assert r.status_code == 409 and "one merged model" in r.json()["error"]["message"]


def test_serve_gguf_bad_input_is_one_line(tmp_path, run, monkeypatch):
    runner = CliRunner()
    (tmp_path / "empty").mkdir()
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    cases = [
        (["--gguf", str(tmp_path / "nothing.gguf")], "no such file or folder"),
        (["--gguf", str(tmp_path / "empty")], "no merged GGUF"),
        (["--gguf", str(tmp_path / "m.gguf"), "--adapter", f"a={run}"], "drop --base/--adapter"),
        (["--gguf", str(tmp_path / "m.gguf")], "cannot load it" if llama_cpp else "llama-cpp-python"),
    ]
    for args, needle in cases:
        result = runner.invoke(cli_app, ["serve", *args])
        assert result.exit_code == 2, result.output
        assert len(result.stderr.strip().splitlines()) == 1 and needle in result.stderr, result.stderr
    monkeypatch.setitem(__import__("sys").modules, "llama_cpp", None)  # llama-cpp-python not installed
    result = runner.invoke(cli_app, ["serve", "--gguf", str(tmp_path / "m.gguf")])
    assert result.exit_code == 2 and "llama-cpp-python, which is not installed" in result.stderr, result.stderr
