"""Model registry: name -> module; each module exposes `Model`, its StyleModel subclass."""

import importlib

from jaxtickets.errors import UserError
from jaxtickets.models.base import StyleModel

# Adding a model = one new module with a `Model` class + one line here.
_MODELS = {
    "adain": "jaxtickets.models.adain",
    "sanet": "jaxtickets.models.sanet",
    "lst": "jaxtickets.models.lst",
    "manet": "jaxtickets.models.manet",
    "adaattn": "jaxtickets.models.adaattn",
    "mccnet": "jaxtickets.models.mccnet",
}


def model_names() -> tuple[str, ...]:
  """The registered model names."""
  return tuple(_MODELS)


def get_model(name: str) -> type[StyleModel]:
  """The StyleModel subclass registered as `name`."""
  if name not in _MODELS:
    raise UserError(f"Unknown model {name!r}: choose one of {', '.join(_MODELS)}.")
  return importlib.import_module(_MODELS[name]).Model


__all__ = ["StyleModel", "get_model", "model_names"]
