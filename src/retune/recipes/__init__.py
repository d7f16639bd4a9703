"""Recipes: short sequences over one Session (retune.session). Only the CLI imports them.

- finetune.py: score the base, fine-tune, score the tuned model, save (`retune train`)
- stages.py:   a sequence of tasks with the accuracy matrix (`retune train` with `stages:`)
- distill.py:  a fine-tuned teacher into a smaller student (`retune distill`)
- tune.py:     a search of trials, each an ordinary train run (`retune tune`)
"""
