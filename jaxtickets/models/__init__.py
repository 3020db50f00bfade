"""The models by name (config.MODELS is the registry); each module exposes `Model`, its StyleModel subclass."""

import importlib
from collections.abc import Mapping

from jaxtickets import config as config_lib
from jaxtickets.errors import UserError
from jaxtickets.models.base import StyleModel


def model_names() -> tuple[str, ...]:
  """The registered model names."""
  return tuple(config_lib.MODELS)


def get_model(name: str) -> type[StyleModel]:
  """The StyleModel subclass registered as `name`."""
  if name not in config_lib.MODELS:
    raise UserError(f"Unknown model {name!r}: choose one of {', '.join(config_lib.MODELS)}.")
  return importlib.import_module(config_lib.MODELS[name]).Model


def build(name: str, fields: Mapping | None = None) -> StyleModel:
  """The model `name` built from a plain dict of config.model fields; shared fields it lacks take
  config.default_config()'s values, its own fields (loss weights...) the reference implementation's."""
  import ml_collections  # pylint: disable=import-outside-toplevel  (only builders need it)
  return get_model(name)(ml_collections.ConfigDict({**dict(fields or {}), "name": name}))


__all__ = ["StyleModel", "build", "get_model", "model_names"]
