"""The modes and what they need: the runner (set-up and dispatch), training (train, solver,
checkpoint, writer, signals, rng), the inference loop, evaluation, prediction and bench."""
