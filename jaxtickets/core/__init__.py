"""What a step is made of: masks and sparsity, held-out evaluation, the device mesh, the early-bird test, named
random streams."""
