"""Training and the protocol: the step and its loop over a pack of runs (train), how many runs a step holds
(layout), compiling the step for a target (aot), rounds and branches (imp), their order (order), linear mode
connectivity (stability), preemption, TensorBoard."""
