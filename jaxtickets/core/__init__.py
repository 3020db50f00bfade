"""The step and what it is made of: masks and sparsity, the jitted train step, evaluation, the device mesh,
compiling a step ahead of time for a target, the early-bird test, named random streams."""
