"""Score a model on a task: the task metric on the test set, plus validation loss and perplexity.

The same prompts and the same scoring are used for the base model and the tuned one, so the two
numbers can be compared directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from retune.config import EvalConfig
from retune.data.dataset import TaskData
from retune.data.templates import Encoded, Formatter
from retune.errors import UsageError
from retune.evaluate import metrics, scoring
from retune.models.tasks import CAUSAL_LM, task_type_of
from retune.types import Autocast, Model, Tokenizer


@dataclass
class Predictions:
    prompts: list[str]
    predictions: list[str]
    references: list[str]


def scoring_mode(task: TaskData, ev: EvalConfig, model: Model | None = None) -> str:
    """How a task is scored, by the model's task type (a causal LM when no model is given): `classifier`
    (argmax of a classification head) for seq_cls models; else the task's own `scoring`, else
    eval.scoring, else the type's default: `likelihood` for a causal LM's label tasks, `generate` otherwise."""
    return (CAUSAL_LM if model is None else task_type_of(model)).scoring(task, ev)


def predict(
    model: Model, tok: Tokenizer, fmt: Formatter, task: TaskData, records: list[dict], ev: EvalConfig, autocast: Autocast
) -> Predictions:
    pairs = [fmt.record_prompt(task.template, r) for r in records]
    prompts, refs = [p for p, _ in pairs], [r for _, r in pairs]
    mode = scoring_mode(task, ev, model)
    if mode == "classifier":
        if not task.labels:
            raise UsageError(f"task {task.name}: a seq_cls model needs labels (data.labels or data.tasks[i].labels)")
        preds = task_type_of(model).classify(model, fmt, prompts, task.labels, tok.pad_token_id, ev.batch_size, autocast)
    elif mode == "likelihood":
        if not task.labels:
            raise UsageError(f"task {task.name}: likelihood scoring needs labels (data.labels); use scoring: generate")
        # each label encoded exactly as a training response would be (chat suffix and all)
        label_ids = [_resp_ids(fmt, label) for label in task.labels]
        prompt_ids = [fmt.prompt_ids(p) for p in prompts]
        ll = scoring.label_loglik(model, prompt_ids, label_ids, tok.pad_token_id, ev.batch_size, autocast, fp32=ev.likelihood_fp32)
        preds = [task.labels[i] for i in ll.argmax(dim=1).tolist()]
    elif mode == "cloze":
        preds = _cloze(model, fmt, task, records, prompts, ev, autocast)
    else:
        preds = scoring.generate(
            model,
            tok,
            prompts,
            task.max_new_tokens or ev.max_new_tokens,
            ev.batch_size,
            autocast,
            add_special_tokens=not fmt.chat,
            stop=task.stop,
            temperature=ev.temperature,
            top_p=ev.top_p,
        )
    return Predictions(prompts, preds, refs)


def _cloze(
    model: Model, fmt: Formatter, task: TaskData, records: list[dict], prompts: list[str], ev: EvalConfig, autocast: Autocast
) -> list[str]:
    """Each record's option (its `choices` columns) with the highest log-probability per character of
    the option's text (lm-evaluation-harness's acc_norm), each option encoded as a response would be."""
    if not task.choices:
        raise UsageError(f"task {task.name}: cloze scoring needs the columns of the options (choices: [col_a, col_b, ...])")
    options = [[str(r[c]) for c in task.choices] for r in records]
    ll = scoring.option_loglik(
        model,
        [fmt.prompt_ids(p) for p in prompts],
        [[_resp_ids(fmt, _continuation(fmt, o)) for o in opts] for opts in options],
        fmt.tok.pad_token_id,
        ev.batch_size,
        autocast,
        fp32=ev.likelihood_fp32,
    )
    return [opts[max(range(len(opts)), key=lambda j: s[j] / max(len(opts[j]), 1))] for opts, s in zip(options, ll, strict=True)]


def _continuation(fmt: Formatter, text: str) -> str:
    # plain text continues the prompt after a space ("Answer: Paris"); a chat reply starts its own turn
    return text if fmt.chat else " " + text


def _resp_ids(fmt: Formatter, label: str) -> list[int]:
    # The label's own tokens, without the end-of-turn marker that follows it in training: the marker's
    # probability after each label would add a bias that has nothing to do with the review.
    return fmt.tok(label, add_special_tokens=False).input_ids


@dataclass
class TaskScores:
    """One task scored: the summary row, and each test example's score under every metric key (what
    intervals and paired comparisons are computed from; evaluate/intervals.py)."""

    row: dict[str, float]
    examples: dict[str, list[float]]
    predictions: Predictions


def score_task(
    model: Model,
    tok: Tokenizer,
    fmt: Formatter,
    task: TaskData,
    val_examples: list[Encoded],
    ev: EvalConfig,
    autocast: Autocast,
    val_loss: float | None = None,
) -> TaskScores:
    """The test set's metric and the validation loss (`val_loss` when it is already known for these
    weights: session/known.py)."""
    pred = predict(model, tok, fmt, task, task.test, ev, autocast)
    each = metrics.per_example_scores(task.metric, pred.predictions, pred.references, records=task.test)
    if metrics.SENTENCE_LEVEL.isdisjoint(each):  # the metric is the mean of its examples: no second pass (sandbox, ROUGE)
        scores = {k: sum(v) / max(len(v), 1) for k, v in each.items()}
    else:  # corpus chrF / BLEU pool n-gram counts over the test set
        scores = metrics.compute(task.metric, pred.predictions, pred.references, records=task.test)
    nll = val_loss if val_loss is not None else scoring.mean_nll(model, val_examples, tok.pad_token_id, ev.batch_size, autocast)
    row = {**scores, "val_loss": nll, "perplexity": metrics.perplexity(nll), "n_test": len(task.test)}
    return TaskScores(row, each, pred)


def evaluate_task(
    model: Model, tok: Tokenizer, fmt: Formatter, task: TaskData, val_examples: list[Encoded], ev: EvalConfig, autocast: Autocast
) -> dict[str, float]:
    """{metric: value, ... (several for `code`), val_loss, perplexity, n_test} for one task."""
    return score_task(model, tok, fmt, task, val_examples, ev, autocast).row
