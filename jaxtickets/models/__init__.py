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
GROUPS = ("encoder", "decoder", "transform")
DECODER_INITS = ("reference", "he_normal")  # the top-level keys of every model's params tree
# The config.model fields every model reads, with their defaults: config.default_config's model section is built
# from this, so a model and the config share one source of defaults without the models importing the config.
SHARED_FIELDS = {
    "name": "adain",
    "width": 1.0,  # channel multiplier; < 1 only for tests and quick experiments
    "train_encoder": True,  # the paper's finding 1: training the VGG encoder too beats keeping it fixed
    "dtype": "float32",
    # The decoder's (and transform's) initial weights: 'reference' (the reference code's, e.g. PyTorch's default
    # kaiming_uniform(a=sqrt(5)) for the shared decoder) or 'he_normal'. Nine zero-bias layers under PyTorch's
    # default start near a constant output, which a short CPU-scale round does not leave (docs/study_cpu/pilots).
    "decoder_init": "reference",
    "vgg_weights": "",  # Flax-format VGG file; empty = random weights (results not meaningful)
    # A random VGG with data that are not the demo's stops in validation unless this opts in (the demo variants do).
    "allow_random_vgg": False,
    "init_from": "",  # a directory from scripts/port_weights.py: its decoder/transform become theta_0
}


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
  SHARED_FIELDS' values, its own fields (loss weights...) the reference implementation's."""
  import ml_collections  # pylint: disable=import-outside-toplevel  (only builders need it)
  return get_model(name)(ml_collections.ConfigDict({**dict(fields or {}), "name": name}))


__all__ = ["DECODER_INITS", "GROUPS", "MODELS", "SHARED_FIELDS", "build", "get_model", "model_names"]
