"""The decoder shared by AdaIN, SANet, MANet and MCCNet: the VGG encoder mirrored from relu4_1 to RGB."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtickets.models import layers
from jaxtickets.models.torch_layout import Layer, KeyLayout, Part
from jaxtickets.models.vgg import channels

# (layer name, full-width output channels, upsample x2 after it); names mirror the encoder's convs.
_LAYERS = (
    ("conv4_1", 256, True),
    ("conv3_4", 256, False),
    ("conv3_3", 256, False),
    ("conv3_2", 256, False),
    ("conv3_1", 128, True),
    ("conv2_2", 128, False),
    ("conv2_1", 64, True),
    ("conv1_2", 64, False),
)


class Decoder(nn.Module):
  """Maps r41-sized features (512*width channels) to an unclamped float32 RGB image 8x larger."""
  width: float = 1.0
  dtype: Any = jnp.float32
  kernel_init: Any = layers.torch_default_init  # the reference's (PyTorch's default); model.decoder_init picks

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    for name, c, up in _LAYERS:
      x = layers.relu(layers.ReflectConv(channels(c, self.width), dtype=self.dtype, kernel_init=self.kernel_init,
                                         name=name)(x))
      if up:
        x = layers.upsample_nearest2x(x)
    # The reference has no output activation: the image is neither squashed nor clamped.
    x = layers.ReflectConv(3, dtype=self.dtype, kernel_init=self.kernel_init, name="conv1_1")(x)
    return x.astype(jnp.float32)


# ------------------------------------------------------------------------------------------------------------
# PyTorch layout (models.md §1.2): the Sequential of AdaIN, SANet, MANet and MCCNet, and LST's dec_r41 (named
# attributes); either file fits either model.

_NAMES = tuple(name for name, _, _ in _LAYERS) + ("conv1_1",)
TORCH_SEQUENTIAL = KeyLayout("decoder (Sequential)", tuple(
    Layer(str(i), d) for i, d in zip((1, 5, 8, 11, 14, 18, 21, 25, 28), _NAMES)))
TORCH_LST = KeyLayout("LST dec_r41", tuple(Layer(f"conv{i}", d) for i, d in zip(range(11, 20), _NAMES)))


def torch_part(example: str, *, lst_first: bool = False) -> Part:
  """The decoder file of a model whose released decoder is `example` (LST's own layout first for LST)."""
  layouts = (TORCH_LST, TORCH_SEQUENTIAL) if lst_first else (TORCH_SEQUENTIAL, TORCH_LST)
  return Part("decoder", layouts, example)
