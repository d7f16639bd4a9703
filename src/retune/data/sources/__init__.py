"""Extractors for the built-in datasets: each reads real text from an installed package or the machine.

One module per source; `retune.data.builtin` registers them with their templates and metrics.
"""
