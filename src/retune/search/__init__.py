"""The mechanism of `retune tune` (the recipe is recipes/tune.py):

- space.py:  draw a trial's values, put them into a config by dotted key, check the space up front
- study.py:  the Optuna study (storage, sampler, claiming trials, interrupted trials) and the pruner
- report.py: objectives from a run's summary, tune.json, the Pareto front (table, plot), best.yaml
"""
