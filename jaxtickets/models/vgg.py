"""The `vgg_normalised` VGG19 encoder (1x1 colour conv + reflect-padded 3x3 convs), truncated at a feature tap."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtickets.errors import UserError
from jaxtickets.models import layers
from jaxtickets.models.torch_layout import Layer, KeyLayout

TAPS = ("r11", "r21", "r31", "r41", "r51")

# One entry per block: (number of convs, full-width channels); a pool sits between blocks.
_BLOCKS = ((2, 64), (2, 128), (4, 256), (4, 512), (1, 512))

# A random VGG is a stand-in loss network: He init keeps the activation scale through the ReLUs, so its
# deep taps (and the losses built on them) do not vanish the way they would with PyTorch's default init.
vgg_init = nn.initializers.he_normal()


def channels(c: int, width: float) -> int:
  """Channel count `c` scaled by the width multiplier (at least 1)."""
  return max(1, int(round(c * width)))


def _check_depth(depth: str) -> int:
  if depth not in TAPS:
    raise UserError(f"Unknown VGG depth {depth!r}: choose one of {', '.join(TAPS)}.")
  return TAPS.index(depth)


def vgg_layer_names(depth: str) -> tuple[str, ...]:
  """Names of the conv layers (conv0 first) the encoder truncated at `depth` holds, in order."""
  last = _check_depth(depth)
  names = ["conv0"]
  for b, (n, _) in enumerate(_BLOCKS[:last + 1]):
    names += [f"conv{b + 1}_{i + 1}" for i in range(n if b < last else 1)]
  return tuple(names)


def truncate(vgg_params: dict, depth: str) -> dict:
  """The subset of VGG params an encoder truncated at `depth` uses (same arrays, not copies)."""
  names = vgg_layer_names(depth)
  missing = [n for n in names if n not in vgg_params]
  if missing:
    raise UserError(f"The VGG params lack layer(s) {', '.join(missing)} needed up to {depth}: "
                    f"load or initialise VGG weights that reach {depth}.")
  return {n: vgg_params[n] for n in names}


def max_pool_floor(x: jax.Array) -> jax.Array:
  """2x2 stride-2 max pool with PyTorch's default floor mode: an odd last row/column is dropped."""
  b, h, w, c = x.shape
  x = x[:, :h - h % 2, :w - w % 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class VGGEncoder(nn.Module):
  """VGG19 (vgg_normalised layout) up to `depth`; returns the ReLU taps {"r11": ..., ..., depth}.

  `ceil_pool` False pools in floor mode, as LST's WCT-style encoders do (the same at even sizes).
  """
  depth: str = "r41"
  width: float = 1.0
  dtype: Any = jnp.float32
  ceil_pool: bool = True
  kernel_init: Any = vgg_init  # the random stand-in's; random_reinit re-draws a trained encoder with it too

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    last = _check_depth(self.depth)
    x = layers.Conv(3, (1, 1), padding="VALID", dtype=self.dtype, param_dtype=jnp.float32,
                    kernel_init=self.kernel_init, name="conv0")(x.astype(self.dtype))
    taps = {}
    for b, (n, c) in enumerate(_BLOCKS[:last + 1]):
      if b:
        x = layers.max_pool_ceil(x) if self.ceil_pool else max_pool_floor(x)
      for i in range(n if b < last else 1):
        x = layers.ReflectConv(channels(c, self.width), dtype=self.dtype, kernel_init=self.kernel_init,
                               name=f"conv{b + 1}_{i + 1}")(x)
        x = layers.relu(x)
        if i == 0:
          taps[TAPS[b]] = x
    return taps


# ------------------------------------------------------------------------------------------------------------
# PyTorch layout: VGG19 files (models.md §1.3, §9) as jaxtickets.weights.port reads them, up to conv5_1.

_TAIL = "conv5_2..conv5_4: no model reads past relu5_1"


def _torch_layout(name: str, srcs: tuple[str, ...], tail: tuple[str, ...], skipped=()) -> KeyLayout:
  names = vgg_layer_names(TAPS[-1])[-len(srcs):]  # torchvision has no conv0
  tail_note = tuple((f"{p}.", _TAIL) for p in tail)
  return KeyLayout(name, tuple(Layer(s, d) for s, d in zip(srcs, names)), tail_note + tuple(skipped),
                zeros=tuple(Layer(p, names[-1]) for p in tail))  # conv5_2..conv5_4 are shaped like conv5_1


VGG_NORMALISED = _torch_layout("vgg_normalised", ("0", "2", "5", "9", "12", "16", "19", "22", "25", "29", "32",
                                                  "35", "38", "42"), ("45", "48", "51"))
TORCHVISION_VGG19 = _torch_layout(
    "torchvision vgg19", tuple(f"features.{i}" for i in (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28)),
    ("features.30", "features.32", "features.34"),
    (("classifier.", "torchvision's fully connected classifier: not part of the encoder"),))
LST_VGG = _torch_layout("LST vgg_r41/vgg_r51", tuple(f"conv{i}" for i in range(1, 15)), ())
TORCH_LAYOUTS = (VGG_NORMALISED, TORCHVISION_VGG19, LST_VGG)
