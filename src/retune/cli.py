"""retune's command line: train | tune | validate | keys | eval | predict | generate | report | runs | models | merge | export | serve
| chat.

Every command turns bad input into one line on stderr and exit code 2 (1 for other failures);
set RETUNE_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from retune.errors import RetuneError, UsageError

if TYPE_CHECKING:
    from retune.config import RetuneConfig
    from retune.session import EvalWatch

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
        # one of several training processes: rank 0 reports bad input (every rank meets the same),
        # other failures name their rank
        several = int(os.environ.get("WORLD_SIZE", "1")) > 1
        rank = int(os.environ.get("RANK", "0")) if several else 0
        who = f"rank {rank}: " if rank else ""
        try:
            return fn(*args, **kwargs)
        except RetuneError as e:
            if debug:
                raise
            if not rank:
                print(f"error: {e}", file=sys.stderr)
            _exit(e.exit_code, several)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as e:  # anything unexpected still gets one line; the traceback is opt-in
            if debug:
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            print(f"{who}error: {type(e).__name__}: {first} (set RETUNE_DEBUG=1 for the traceback)", file=sys.stderr)
            _exit(1, several)

    return wrapper


def _exit(code: int, several: bool) -> None:
    """Exit with `code`. One of several training processes leaves at once (os._exit): after a failed
    collective, tearing down the broken process group at interpreter exit aborts ("terminate called
    without an active exception", SIGABRT), and torchrun would then report that instead of the cause."""
    if several:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise typer.Exit(code)


@app.command()
@command
def train(
    config: Annotated[str | None, typer.Argument(help="YAML config file")] = None,
    set_: SetOpt = None,
    resume: Annotated[str | None, typer.Option(help="Continue an interrupted run from its last checkpoint")] = None,
    nproc: Annotated[
        int, typer.Option(help="Data-parallel processes on this machine (torchrun underneath; gloo on CPU, one GPU each on GPUs)")
    ] = 1,
    fsdp: Annotated[
        bool, typer.Option("--fsdp", help="With --nproc: shard weights, gradients and optimizer state across the processes (FSDP2)")
    ] = False,
) -> None:
    """Score the base model, fine-tune it, score it again; everything goes into a run directory."""
    _quiet_libraries()
    from retune.train import distributed

    if nproc < 1:
        raise UsageError(f"--nproc {nproc}: give a number of processes, 1 or more")
    if fsdp and nproc < 2:
        raise UsageError("--fsdp shards the model across processes: give --nproc 2 or more")
    if nproc > 1:
        if distributed.launched():
            raise UsageError("--nproc inside torchrun / accelerate launch: the launcher already started the processes; drop --nproc")
        _train_processes(config, set_, resume, nproc, fsdp)
        return
    with distributed.quiet_off_main():
        run_dir, _ = run_train(config, set_, resume)
    if not os.environ.get("RETUNE_LAUNCHER") and distributed.is_main():  # under --nproc, the parent prints it
        print(run_dir / "summary.json")


def run_train(config: str | None, overrides: list[str] | None = None, resume: str | None = None) -> tuple[Path, dict]:
    """`retune train`: the fine-tune recipe, or the stages recipe when the config has `stages:`.
    Returns the run directory and its summary."""
    from retune.config import load_config
    from retune.recipes import finetune
    from retune.rundir import RunDir

    if resume:
        run = RunDir.open(resume, "--resume")
        cfg = run.config(overrides)
        if cfg.stages:
            raise UsageError("--resume does not cover stages: yet; each stage's weights are in RUN/stage-<i>/")
        done, summary = finetune.run(cfg, run)
        return done.path, summary
    if config is None:
        raise UsageError("give a config file (retune train CONFIG) or --resume RUN_DIR")
    return train_config(load_config(config, overrides))


def train_config(cfg: RetuneConfig, watch: EvalWatch | None = None) -> tuple[Path, dict]:
    """One training run of a validated config (the dispatch of `retune train`, and each trial of
    `retune tune`); `watch` hears every evaluation. Returns the run directory and its summary."""
    from retune.recipes import finetune, stages

    done, summary = stages.run(cfg, watch) if cfg.stages else finetune.run(cfg, watch=watch)
    return done.path, summary


def _train_processes(config: str | None, set_: list[str] | None, resume: str | None, nproc: int, fsdp: bool = False) -> None:
    """`retune train --nproc N [--fsdp]`: the same command in N processes under torchrun (with
    Accelerate's FSDP settings: --fsdp); one line if one fails."""

    from retune.config import load_config
    from retune.io import write_json
    from retune.rundir import RunDir, check_output_dir, is_run_dir, plan_path
    from retune.train import distributed

    if resume:
        run_dir = RunDir.open(resume, "--resume").path
    elif config is None:
        raise UsageError("give a config file (retune train CONFIG) or --resume RUN_DIR")
    else:
        cfg = load_config(config, set_)  # bad config: exit 2 before any process starts
        check_output_dir(cfg)
        distributed.check_fsdp(cfg, asked=fsdp)
        run_dir = plan_path(cfg)
    args = ["retune.cli", "train", *([config] if config else []), *[f"--set={s}" for s in set_ or []]]
    args += ["--resume", resume] if resume else []
    env = {"RETUNE_LAUNCHER": "1", "RETUNE_RUN_DIR": "" if resume else str(run_dir), **(distributed.FSDP_ENV if fsdp else {})}
    try:
        distributed.launch(args, nproc, env=env)
    except distributed.LaunchFailed as e:
        if e.exit_code == 2:  # bad input: rank 0 has said what
            raise typer.Exit(2) from None
        hint = f"resume with: retune train --resume {run_dir} --nproc {nproc}" + (" --fsdp" if fsdp else "")
        if is_run_dir(run_dir):
            summary = run_dir / "summary.json"
            old = json.loads(summary.read_text()) if summary.exists() else {"run_dir": str(run_dir)}
            write_json(summary, {**old, "status": f"failed: {e}; {hint}"})
            raise RetuneError(f"{e}. Checkpoints are written whole or not at all: {hint}") from None
        raise RetuneError(str(e)) from None
    print(run_dir / "summary.json")


@app.command()
@command
def tune(
    config: Annotated[str, typer.Argument(help="YAML config file with a tune: section")],
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the study after a kill, or join it as another worker")] = False,
    storage: Annotated[
        str | None, typer.Option(help="Study storage URL (default: sqlite in the tune directory); postgresql://... for several machines")
    ] = None,
    trials: Annotated[int | None, typer.Option(help="Trials in the study (overrides tune.trials)")] = None,
    budget: Annotated[str | None, typer.Option(help="Memory budget per trial, e.g. 8GB (default: this machine's memory)")] = None,
) -> None:
    """Search config keys for the best new-task score that forgets least: a Pareto front, best.yaml."""
    _quiet_libraries()
    from retune import plan as planner
    from retune.config import load_config
    from retune.recipes import tune as search

    if trials is not None and trials < 1:
        raise UsageError(f"--trials {trials}: give 1 or more")
    budget_mb = planner.parse_budget(budget) if budget is not None else None
    cfg = load_config(config, [*(set_ or []), *([f"tune.trials={trials}"] if trials else [])])
    search.run(cfg, train_config, storage, resume, budget_mb)


@app.command()
@command
def validate(config: str, set_: SetOpt = None) -> None:
    """Check a config (keys, types, combinations, data files and columns) without loading a model."""
    from retune.config import load_config
    from retune.data.dataset import load_task_config
    from retune.models.resolve import resolve_base
    from retune.session.prepare import default_template, run_tasks

    cfg = load_config(config, set_)
    resolve_base(cfg.model.base, materialise=False)
    configs, kinds = run_tasks(cfg)
    tasks = [load_task_config(t, cfg.data, cfg.eval, default_template(k)) for t, k in zip(configs, kinds, strict=True)]
    for t in cfg.retain.tasks:  # retained tasks' sources are data too: a wrong path fails here, not after training
        load_task_config(t, cfg.data, cfg.eval)
    parts = [f"task {t.name}: {len(t.train)} train, {len(t.validation)} validation, {len(t.test)} test; metric {t.metric}" for t in tasks]
    print(f"ok: {config} ({'; '.join(parts)})")


@app.command()
@command
def keys(prefix: Annotated[str | None, typer.Argument(help="Only keys under this one, e.g. trainer or data.tasks[0]")] = None) -> None:
    """Every config key with its type, default and documentation, generated from the schema (docs/config.md)."""
    from retune.config import format_keys

    print(format_keys(prefix), end="")


@app.command("eval")
@command
def eval_(
    target: Annotated[str, typer.Argument(help="A run directory, or a config (scores its base model)")],
    set_: SetOpt = None,
    lm_eval: Annotated[str | None, typer.Option("--lm-eval", help="lm-evaluation-harness tasks, comma-separated (retune[lmeval])")] = None,
    include: Annotated[str | None, typer.Option("--include", help="--lm-eval: a folder of your own task YAMLs")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="--lm-eval: documents per task")] = None,
) -> None:
    """Score a tuned run (or a config's base model) on its tasks and what it must retain, with 95% intervals."""
    _quiet_libraries()
    from retune.config import LmEvalConfig
    from retune.inference.tuned import evaluate

    harness = None
    if lm_eval is not None:
        names = [t.strip() for t in lm_eval.split(",") if t.strip()]
        if not names or (limit is not None and limit < 1):
            raise UsageError("--lm-eval needs task names (e.g. --lm-eval hellaswag,arc_easy) and --limit a positive count")
        harness = [LmEvalConfig(task=t, limit=limit, include_path=include) for t in names]
    print(json.dumps(evaluate(target, set_, harness), indent=2))


@app.command()
@command
def predict(
    run: str,
    input: Annotated[str, typer.Option("--input", "-i", help="JSONL/CSV/... records with the template's prompt fields")],
    output: Annotated[str | None, typer.Option("--output", "-o", help="Write JSONL here instead of stdout")] = None,
) -> None:
    """Predict on unseen records with a tuned run."""
    _quiet_libraries()
    from retune.inference.tuned import predict as run_predict

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
    from retune.inference.tuned import generate_text

    print(generate_text(run, prompt, max_new_tokens, temperature))


@app.command()
@command
def distill(
    teacher: Annotated[str, typer.Argument(help="A fine-tuned run directory (the teacher)")],
    layers: Annotated[int | None, typer.Option(help="Student = the teacher with this many of its layers (evenly spaced)")] = None,
    student: Annotated[str | None, typer.Option(help="Student = this smaller model (same tokenizer): built-in, folder or hub id")] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Output folder (default: TEACHER/student)")] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps")] = 200,
    lr: Annotated[float, typer.Option(help="Learning rate")] = 1e-4,
    temperature: Annotated[float, typer.Option(help="Distillation temperature T")] = 2.0,
    weight: Annotated[float, typer.Option(help="Weight of the KL term next to the task loss")] = 1.0,
    set_: SetOpt = None,
) -> None:
    """Distil a fine-tuned teacher into a smaller student; report both scores and sizes."""
    _quiet_libraries()
    from retune.recipes.distill import distill as run_distill

    s = run_distill(teacher, out, layers, student, steps, lr, temperature, weight, set_)
    t, st, m = s["teacher"], s["student"], s["metric"]
    print(json.dumps({"metric": m, "teacher": {m: t.get(m), "size_mb": t["size_mb"]}, "student": {m: st.get(m), "size_mb": st["size_mb"]}}))


@app.command()
@command
def plan(
    config: Annotated[str, typer.Argument(help="YAML config file")],
    budget: Annotated[
        str | None, typer.Option(help="Memory budget, e.g. 8GB or 512MB: does the run fit, else the cheapest change that does")
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the plan as JSON on stdout")] = False,
    export: Annotated[
        str | None, typer.Option("--export", help="Also plan `retune export RUN --gguf TYPE` (its own process) as the last phase")
    ] = None,
    evaluation: Annotated[
        bool, typer.Option("--eval", help="Plan `retune eval CONFIG` instead: loading and the base model's scoring")
    ] = False,
    set_: SetOpt = None,
) -> None:
    """Predict the run's peak memory (weights, gradients, optimizer, activations, ...) without loading weights."""
    _quiet_libraries()
    from retune import plan as planner
    from retune.config import load_config

    budget_mb = planner.parse_budget(budget) if budget is not None else None
    cfg = load_config(config, set_)
    if cfg.tune.space:  # a search: its largest trial
        from retune.plan.search import largest_trial

        result, cfg = largest_trial(cfg)
        shape = planner.model_shape(cfg)
    else:
        shape = planner.model_shape(cfg)
        result = planner.estimate(cfg, shape)
    if evaluation:
        result = result.evaluation_only()
    if export is not None:
        from retune.plan.export import with_export

        result = with_export(result, cfg, shape, export)
    if budget_mb is not None:
        planner.check_budget(cfg, result, budget_mb, shape)
    planner.print_plan(result, config)
    if json_:
        print(json.dumps(result.to_dict(), indent=2))


@app.command()
@command
def report(
    runs: Annotated[list[str], typer.Argument(help="Run directories (several: compared), or a search directory with tune.json")],
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="Output file (default: RUN/report.html; several runs: ./report.html)")
    ] = None,
) -> None:
    """Write a self-contained HTML report (opens from disk, no network) of one run, several runs, or a search."""
    from retune.report.build import build

    print(build(runs, out))


@app.command("runs")
@command
def runs_(
    folder: Annotated[str, typer.Argument(help="The folder that holds run directories (output.dir)")] = "runs",
    sort: Annotated[
        str, typer.Option(help="Sort by: name, status, base, adapter, score, change, worst_retained, tokens_per_s, wall_s, date")
    ] = "date",
    reverse: Annotated[bool, typer.Option("--reverse", help="Largest (or latest) first")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the rows as JSON on stdout")] = False,
) -> None:
    """List the runs under a folder: status, model, adapter, scores with change, worst retained change, speed."""
    from retune.report.listing import print_runs
    from retune.report.rows import find_runs, run_row, sort_rows

    rows = sort_rows([run_row(r) for r in find_runs(folder)], sort, reverse)
    if json_:
        print(json.dumps(rows, indent=2))
    else:
        print_runs(folder, rows)


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


@app.command()
@command
def merge(
    run: Annotated[str, typer.Argument(help="A run directory with adapter/ (or model/)")],
    out: Annotated[str | None, typer.Option("--out", "-o", help="Output folder (default: RUN/merged, or RUN/adapter-export)")] = None,
    dtype: Annotated[str, typer.Option(help="auto (the base's serving precision) | bf16 | fp32")] = "auto",
    adapter_only: Annotated[bool, typer.Option("--adapter-only", help="Export the adapter alone in peft format")] = False,
) -> None:
    """Fold the adapter into the base: a standalone Hugging Face checkpoint with no added latency."""
    _quiet_libraries()
    from retune.models.merge import export_adapter, merge_run

    if dtype not in ("auto", "bf16", "fp32"):
        raise UsageError(f"--dtype {dtype}: use auto, bf16 or fp32")
    print(export_adapter(run, out) if adapter_only else merge_run(run, out, dtype))  # type: ignore[arg-type]


@app.command()
@command
def export(
    run: Annotated[str, typer.Argument(help="A run directory with adapter/ (or model/)")],
    gguf: Annotated[str, typer.Option("--gguf", help="f32 | f16 | bf16 | q8_0, or a llama.cpp type: q4_k_m, q5_k_m, q6_k, ...")] = "q8_0",
    out: Annotated[str | None, typer.Option("--out", "-o", help="The .gguf file (default: RUN/gguf/<run>-<type>.gguf)")] = None,
    adapter_only: Annotated[bool, typer.Option("--adapter-only", help="The LoRA adapter alone, for llama.cpp's --lora")] = False,
    ollama: Annotated[bool, typer.Option("--ollama", help="Also write an Ollama Modelfile beside the GGUF")] = False,
) -> None:
    """A run as one GGUF file for llama.cpp / Ollama / LM Studio (tokenizer, chat template and stop tokens included)."""
    _quiet_libraries()
    from retune.export.run import export_run

    result = export_run(run, gguf, out, adapter_only, ollama)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    size = result.gguf.stat().st_size / 2**20
    print(f"{result.gguf}  ({size:.1f} MiB)")
    if result.modelfile:
        print(f"{result.modelfile}  (ollama create NAME -f {result.modelfile})")


@app.command()
@command
def serve(
    base: Annotated[str | None, typer.Option(help="The base model (default: the first adapter's base)")] = None,
    adapter: Annotated[list[str] | None, typer.Option(help="NAME=RUN_DIR, repeatable: an adapter served as model NAME")] = None,
    adapter_dir: Annotated[str | None, typer.Option(help="Allow POST /v1/adapters to add runs from this folder, by name")] = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: Annotated[str | None, typer.Option(envvar="RETUNE_API_KEY", help="Require Authorization: Bearer KEY")] = None,
    max_tokens: Annotated[int, typer.Option(help="Largest max_tokens a request may ask for")] = 512,
    max_batch: Annotated[int, typer.Option(help="Requests generated together in one batch")] = 8,
    max_queue: Annotated[int, typer.Option(help="Waiting requests before 429")] = 128,
    timeout: Annotated[float, typer.Option(help="Seconds a request may take, queue included")] = 120.0,
    gguf: Annotated[
        str | None, typer.Option(help="Serve a GGUF export through llama.cpp (a .gguf, or a run exported with retune export RUN --gguf)")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for generation (default: all cores)")] = None,
) -> None:
    """An OpenAI-compatible HTTP API (chat, completions, streaming) over a base and named adapters, or a GGUF."""
    _quiet_libraries()
    from retune.serve.app import Settings
    from retune.serve.server import serve as run_server

    if min(max_tokens, max_batch, max_queue, threads or 1) < 1 or timeout <= 0:
        raise UsageError("--max-tokens, --max-batch, --max-queue, --threads and --timeout must be positive")
    settings = Settings(api_key=api_key, max_tokens=max_tokens, default_max_tokens=min(128, max_tokens), timeout_s=timeout)
    run_server(base, adapter or [], adapter_dir, host, port, settings, max_batch, max_queue, gguf, threads)


@app.command()
@command
def chat(
    run: Annotated[str, typer.Argument(help="A run directory, or a model (built-in name, folder, hub id)")],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    system: Annotated[str | None, typer.Option(help="A system prompt kept at the top of the history")] = None,
) -> None:
    """Chat in the terminal with a tuned run; the conversation so far is the context of each reply."""
    _quiet_libraries()
    from retune.inference.chat import chat_loop

    chat_loop(run, max_new_tokens=max_new_tokens, temperature=temperature, system=system)


def main() -> None:
    from retune import allocator

    allocator.reexec()  # before torch is imported: tcmalloc for training (retune/allocator.py says why)
    app()


if __name__ == "__main__":
    main()
