"""The types at retune's public boundaries: a model, its tokenizer, the Accelerator, an autocast factory.

transformers, peft and accelerate are imported for the type checker only: every module has
`from __future__ import annotations`, so at run time these aliases are never evaluated and
importing retune stays cheap (the libraries load where a model is loaded).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    import accelerate
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# A loaded base (causal LM, classifier or seq2seq), or a base with a peft adapter attached. A model as
# the engine wrapped it for training (DDP, FSDP, DeepSpeed) is not one: train/loop.py keeps that as Any.
Model: TypeAlias = "PreTrainedModel | PeftModel"
Tokenizer: TypeAlias = "PreTrainedTokenizerBase"
Accelerator: TypeAlias = "accelerate.Accelerator"
# `with autocast():` around a forward (Accelerator.autocast, or contextlib.nullcontext)
Autocast: TypeAlias = Callable[[], contextlib.AbstractContextManager[Any]]
