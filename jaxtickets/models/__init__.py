"""Model registry: name -> module; each module exposes `Model`, its StyleModel subclass."""

import importlib
from collections.abc import Mapping

from jaxtickets.errors import UserError
from jaxtickets.models.base import StyleModel

# Adding a model = one new module with a `Model` class (its PyTorch layout at its end) + one line here.
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


def build(name: str, fields: Mapping | None = None) -> StyleModel:
  """The model `name` built from a plain dict of config.model fields; fields it lacks take the model's defaults."""
  import ml_collections  # pylint: disable=import-outside-toplevel  (only builders need it)
  return get_model(name)(ml_collections.ConfigDict({**dict(fields or {}), "name": name}))


__all__ = ["StyleModel", "build", "get_model", "model_names"]
