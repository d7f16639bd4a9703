"""Using a model after (or without) training: re-score, predict, generate, chat."""
