"""scripts/make_demo_vgg.py: what it trains on, and that the same seed writes the same file."""

import hashlib
import os

import numpy as np
import pytest

from jaxtickets import data
from jaxtickets.weights import files as weights

from helpers import load_script


@pytest.fixture(scope="module")
def script():
  return load_script("make_demo_vgg")


def test_the_held_out_images_are_never_trained_on(script):
  names = {os.path.basename(p) for p in script.training_images()}
  held_out = {os.path.basename(p) for kind in ("eval_content", "eval_style") for p in data.demo_images(kind)}
  assert names and not names & held_out
  assert {os.path.basename(p) for p in data.demo_images("content")} <= names  # the training images are in


@pytest.mark.e2e  # trains the script's autoencoder and writes its file
def test_the_same_seed_writes_the_same_bytes_and_the_loader_takes_them(script, tmp_path):
  digests = []
  for name in ("a.npz", "b.npz"):
    out = str(tmp_path / name)
    assert script.main(["--width=0.0625", "--steps=2", "--batch=2", "--crop=32", f"--out={out}"]) == 0
    digests.append(hashlib.sha256(open(out, "rb").read()).hexdigest())
  assert digests[0] == digests[1]
  from jaxtickets import models
  import jax
  model = models.build("adain", {"width": 0.0625})
  vgg = weights.load_vgg_weights(str(tmp_path / "a.npz"), jax.eval_shape(model.init_vgg, jax.random.PRNGKey(0)))
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(vgg))
