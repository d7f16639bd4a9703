"""Predict a run's peak memory before loading any weights: `retune plan CONFIG`.

- shapes.py: the model's sizes (meta device) and the largest micro-batch of the data
- estimate.py: the parts (weights, gradients, optimizer, activations, logits, ...) and the peak,
  with the measured constants
- budget.py: fits a budget? the cheapest change that does; printing
"""

from retune.plan.budget import candidates, check_budget, parse_budget, print_plan
from retune.plan.estimate import (
    ALLOC_OVERHEAD,
    ALLOC_OVERHEAD_LEAN_ADAPTER,
    CE_CHUNK,
    LOAD_RESIDENT,
    RUNTIME_MB,
    Plan,
    Rules,
    estimate,
    layer_activation_bytes,
    lean_applies,
    lean_layer_bytes,
)
from retune.plan.shapes import Batch, Shape, batch_shape, model_shape, shape_from_config

__all__ = [
    "ALLOC_OVERHEAD",
    "ALLOC_OVERHEAD_LEAN_ADAPTER",
    "CE_CHUNK",
    "LOAD_RESIDENT",
    "RUNTIME_MB",
    "Batch",
    "Plan",
    "Rules",
    "Shape",
    "batch_shape",
    "candidates",
    "check_budget",
    "estimate",
    "layer_activation_bytes",
    "lean_applies",
    "lean_layer_bytes",
    "model_shape",
    "parse_budget",
    "print_plan",
    "shape_from_config",
]
