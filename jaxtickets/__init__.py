"""jaxtickets: lottery tickets in arbitrary style transfer models, in JAX/Flax."""

from jaxtickets.errors import UserError

__version__ = "0.1.0"


def load_ticket(path):
  """Loads a saved ticket (masks, rewind weights, trained weights, metrics, sparsity) from `path`."""
  from jaxtickets import checkpoint  # Orbax is slow to import; only pay for it when used.
  return checkpoint.load_ticket(path)


__all__ = ["UserError", "load_ticket", "__version__"]
