"""The models by name: MODELS is the registry; each module exposes `Model`, its base.StyleModel subclass.

Light on purpose: config.py validates model names and param groups against this registry without importing JAX,
so a model's module is imported only when the model is asked for.
"""

import importlib
from collections.abc import Mapping

from jaxtickets.errors import UserError

# The model registry: name -> module, whose `Model` is its StyleModel subclass. Adding a model = one new module
# here (its PyTorch layout at its end) + one line below.
MODELS = {
    "adain": "jaxtickets.models.adain",
    "sanet": "jaxtickets.models.sanet",
    "lst": "jaxtickets.models.lst",
    "manet": "jaxtickets.models.manet",
    "adaattn": "jaxtickets.models.adaattn",
    "mccnet": "jaxtickets.models.mccnet",
}
GROUPS = ("encoder", "decoder", "transform")  # the top-level keys of every model's params tree


def model_names() -> tuple[str, ...]:
  """The registered model names."""
  return tuple(MODELS)


def get_model(name: str) -> type:
  """The StyleModel subclass registered as `name`."""
  if name not in MODELS:
    raise UserError(f"Unknown model {name!r}: choose one of {', '.join(MODELS)}.")
  return importlib.import_module(MODELS[name]).Model


def build(name: str, fields: Mapping | None = None):
  """The model `name` (a StyleModel) built from a plain dict of config.model fields; shared fields it lacks take
  config.default_config()'s values, its own fields (loss weights...) the reference implementation's."""
  import ml_collections  # pylint: disable=import-outside-toplevel  (only builders need it)
  return get_model(name)(ml_collections.ConfigDict({**dict(fields or {}), "name": name}))


__all__ = ["GROUPS", "MODELS", "build", "get_model", "model_names"]
