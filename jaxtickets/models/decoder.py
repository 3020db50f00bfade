"""The decoder shared by AdaIN, SANet, MANet and MCCNet: the VGG encoder mirrored from relu4_1 to RGB."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtickets.models import layers
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

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    for name, c, up in _LAYERS:
      x = nn.relu(layers.ReflectConv(channels(c, self.width), dtype=self.dtype, name=name)(x))
      if up:
        x = layers.upsample_nearest2x(x)
    # The reference has no output activation: the image is neither squashed nor clamped.
    x = layers.ReflectConv(3, dtype=self.dtype, name="conv1_1")(x)
    return x.astype(jnp.float32)
