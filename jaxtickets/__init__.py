"""jaxtickets: lottery tickets in arbitrary style transfer models, in JAX/Flax."""

# First, before any entry point imports JAX: quiets libtpu's TPU probe on a machine without a TPU.
from jaxtickets import startup as _startup

_startup.early_setup()

from jaxtickets.errors import UserError  # pylint: disable=wrong-import-position

__version__ = "0.1.0"


def load_ticket(path):
  """Loads a saved ticket (masks, rewind weights, trained weights, metrics, sparsity) from `path`."""
  from jaxtickets.store import checkpoint  # Orbax is slow to import; only pay for it when used.
  return checkpoint.load_ticket(path)


__all__ = ["UserError", "load_ticket", "__version__"]
