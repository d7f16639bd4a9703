"""retune's command line: train | validate | eval | predict | generate | models.

Every command turns bad input into one line on stderr and exit code 2 (1 for other failures);
set RETUNE_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from retune.errors import RetuneError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Fine-tune pretrained language models without forgetting.")

SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a config key: --set trainer.epochs=2")]


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import logging
    import warnings

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # optional CPU kernels it cannot find

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command with retune's error contract: one line, exit 2 for bad input, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool(os.environ.get("RETUNE_DEBUG"))
        try:
            return fn(*args, **kwargs)
        except RetuneError as e:
            if debug:
                raise
            print(f"error: {e}", file=sys.stderr)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as e:  # anything unexpected still gets one line; the traceback is opt-in
            if debug:
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            print(f"error: {type(e).__name__}: {first} (set RETUNE_DEBUG=1 for the traceback)", file=sys.stderr)
            raise typer.Exit(1) from None

    return wrapper


@app.command()
@command
def train(
    config: Annotated[str | None, typer.Argument(help="YAML config file")] = None,
    set_: SetOpt = None,
    resume: Annotated[str | None, typer.Option(help="Continue an interrupted run from its last checkpoint")] = None,
) -> None:
    """Score the base model, fine-tune it, score it again; everything goes into a run directory."""
    _quiet_libraries()
    from retune.run import train as run_train

    run_dir, _ = run_train(config, set_, resume)
    print(run_dir / "summary.json")


@app.command()
@command
def validate(config: str, set_: SetOpt = None) -> None:
    """Check a config (keys, types, combinations, data files and columns) without loading a model."""
    from retune.config import load_config

    cfg = load_config(config, set_)
    from retune.data.dataset import load_task
    from retune.models.resolve import resolve_base

    resolve_base(cfg.model.base, materialise=False)
    task = load_task(cfg.data, cfg.eval)
    sizes = f"{len(task.train)} train, {len(task.validation)} validation, {len(task.test)} test"
    print(f"ok: {config} (task {task.name}: {sizes}; metric {task.metric})")


@app.command("eval")
@command
def eval_(target: Annotated[str, typer.Argument(help="A run directory, or a config (scores its base model)")], set_: SetOpt = None) -> None:
    """Score a tuned run (or a config's base model) on its task."""
    _quiet_libraries()
    from retune.run import evaluate

    print(json.dumps(evaluate(target, set_), indent=2))


@app.command()
@command
def predict(
    run: str,
    input: Annotated[str, typer.Option("--input", "-i", help="JSONL/CSV/... records with the template's prompt fields")],
    output: Annotated[str | None, typer.Option("--output", "-o", help="Write JSONL here instead of stdout")] = None,
) -> None:
    """Predict on unseen records with a tuned run."""
    _quiet_libraries()
    from retune.run import predict as run_predict

    rows = run_predict(run, input, output)
    if output is None:
        for r in rows:
            print(json.dumps(r, ensure_ascii=False))


@app.command()
@command
def generate(
    run: Annotated[str, typer.Argument(help="A run directory, or a model (built-in name, folder, hub id)")],
    prompt: str,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
) -> None:
    """Generate a reply to one prompt (greedy unless --temperature > 0)."""
    _quiet_libraries()
    from retune.run import generate_text

    print(generate_text(run, prompt, max_new_tokens, temperature))


@app.command()
def models() -> None:
    """List the built-in models."""
    from retune.models.builtin import BUILTIN_MODELS

    for m in BUILTIN_MODELS.values():
        print(f"{m.name:24} {m.description}")


data_app = typer.Typer(no_args_is_help=True, help="Built-in datasets: list them, show examples.")
app.add_typer(data_app, name="data")


@data_app.command("list")
@command
def data_list() -> None:
    """Each built-in dataset with its split sizes, metric and source (extracted and cached on first use)."""
    from retune.data.preview import list_lines

    print("\n".join(list_lines()))


@data_app.command("show")
@command
def data_show(
    name: str,
    split: Annotated[str | None, typer.Option("--split", help="train | validation | test (default: the first split)")] = None,
    n: Annotated[int, typer.Option("-n", help="How many examples")] = 3,
    model: Annotated[str | None, typer.Option(help="Render with this model's chat template and count tokens")] = None,
) -> None:
    """Print a few examples rendered through the dataset's default template."""
    from retune.data.preview import show_examples

    tok = None
    if model:
        _quiet_libraries()
        from retune.models.load import load_tokenizer
        from retune.models.resolve import resolve_base

        tok = load_tokenizer(resolve_base(model))
    print("\n\n".join(show_examples(name, split, n, tok)))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
