"""How a released PyTorch file's keys map to a model's Flax params: the vocabulary of each model's `torch_parts`.

Each model file ends with its own layouts (models.md §x.6), vgg.py and decoder.py hold the shared ones, and
jaxtickets/weights/port.py converts any file by them. No imports beyond the standard library: a layout is plain data.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Layer:
  """One PyTorch layer: `src` is its key prefix (src.weight, src.bias), `dst` its Flax path ("a/b")."""
  src: str
  dst: str
  linear: bool = False  # nn.Linear (O, I) rather than nn.Conv2d (O, I, kh, kw)


@dataclasses.dataclass(frozen=True)
class KeyLayout:
  """A file's key layout: its layers plus known harmless extras (key prefix, note) that are skipped.

  `zeros` are layers of the upstream module that no param fills and that its forward pass never runs (a VGG's tail,
  MCCNet's unused h): jaxtickets.tickets.export_torch writes them as zeros shaped like the layer `dst` names,
  because the upstream scripts load strictly; each one's key must fall under a `skipped` prefix so reading them back
  skips them.
  """
  name: str
  layers: tuple[Layer, ...]
  skipped: tuple[tuple[str, str], ...] = ()
  zeros: tuple[Layer, ...] = ()

  def known(self, key: str) -> bool:
    return (any(key in (f"{l.src}.weight", f"{l.src}.bias") for l in self.layers)
            or any(key.startswith(p) for p, _ in self.skipped))


@dataclasses.dataclass(frozen=True)
class Part:
  """One released file of a model: where it lands in params ("decoder", "transform/transformer") and the key
  layouts it may come in (the best-matching one is checked; the first one is the model's own)."""
  dst: str
  layouts: tuple[KeyLayout, ...]
  example: str  # the released file name, for messages


def convs(prefix: str, dst: str, names=("f", "g", "h", "out_conv")) -> tuple[Layer, ...]:
  """The 1x1 convs of an attention block: <prefix>.f -> <dst>/f and so on (an empty prefix or dst: none)."""
  return tuple(Layer(f"{prefix}.{c}" if prefix else c, f"{dst}/{c}" if dst else c) for c in names)
