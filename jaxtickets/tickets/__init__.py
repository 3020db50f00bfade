"""Using a ticket: stylizing with it, and exporting it (the compact format, and PyTorch's upstream files)."""
