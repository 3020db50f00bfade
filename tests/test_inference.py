"""The Stylizer: tickets, ported weights, any size, style mixing, color keeping, errors that name the path."""

import json
import os
import re

import jax
import numpy as np
import pytest

from jaxtickets import config as config_lib
from jaxtickets.store import checkpoint, workdir as workdir_lib
from jaxtickets.tickets import inference
from jaxtickets import models
from jaxtickets.core import sparsity
from jaxtickets.errors import UserError
from helpers import tiny_config


def make_workdir(root, config, rounds=3):
  """A run's layout without training: config.json and tickets/imp/rep_0/round_NN with `rounds` IMP prunings."""
  workdir = str(root)
  checkpoint.save_json(os.path.join(workdir, "config.json"), json.loads(config.to_json()))
  model, vgg = inference.model_and_vgg(config_lib.resolve(config).model)
  params = jax.device_get(model.init(jax.random.PRNGKey(7), vgg))
  prunable = sparsity.prunable_leaves(params, config.sparsity.scope.split(","), allow_missing_groups=True)
  masks = sparsity.ones_masks(params)
  for _ in range(rounds):
    masks = sparsity.global_magnitude_prune(params, masks, prunable, 0.2)
  # "Trained" weights differ from the rewind point, and are masked as a finished round's are.
  trained = jax.tree.map(lambda p, m: np.where(m, p * 1.5 + 0.01, 0).astype(p.dtype), params, masks)
  path = workdir_lib.ticket_dir(workdir, "imp", rounds)
  checkpoint.save_ticket(path, masks=masks, rewind_params=params, trained_params=trained,
                         metrics={"round": rounds, "total": 1.0}, sparsity=sparsity.count(masks, prunable, params))
  return path, model, vgg, params, trained, masks


@pytest.fixture(scope="module")
def ticket(tmp_path_factory):
  return make_workdir(tmp_path_factory.mktemp("run"), tiny_config())


@pytest.fixture(scope="module")
def stylizer(ticket):
  return inference.Stylizer.from_ticket(ticket[0])


def test_a_ticket_is_used_with_the_model_and_vgg_the_trainer_built(tmp_path):
  """One builder for both: with config.train.dtype set, inference computes in it too and draws the same stand-in
  VGG (config.seed's VGG stream)."""
  from jaxtickets.run import imp  # pylint: disable=g-import-not-at-top

  config = tiny_config(train__dtype="bfloat16")
  trainer = imp.setup(config_lib.resolve(config), str(tmp_path / "setup")).compute
  path, _, vgg, _, _, _ = make_workdir(tmp_path / "run", config, rounds=1)
  used = inference.Stylizer.from_ticket(path)
  assert used.model == trainer.model and used.model_config["dtype"] == "bfloat16"
  for got, want, made in zip(jax.tree.leaves(used.vgg_params), jax.tree.leaves(jax.device_get(trainer.vgg_params)),
                             jax.tree.leaves(vgg)):
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(made, want)


def images(seed, *shapes):
  rng = np.random.default_rng(seed)
  return [rng.random(s, dtype=np.float32) for s in shapes]


def test_from_ticket_uses_the_masked_trained_weights(ticket, stylizer):
  _, model, vgg, params, trained, masks = ticket
  for got, want in zip(jax.tree.leaves(stylizer.params), jax.tree.leaves(trained)):
    np.testing.assert_array_equal(got, want)
  # The random VGG is drawn with imp's key, so it is the run's VGG.
  for got, want in zip(jax.tree.leaves(stylizer.vgg_params), jax.tree.leaves(vgg)):
    np.testing.assert_array_equal(got, want)
  rewind = inference.Stylizer.from_ticket(ticket[0], which="rewind")
  for got, p, m in zip(jax.tree.leaves(rewind.params), jax.tree.leaves(params), jax.tree.leaves(masks)):
    np.testing.assert_array_equal(got, np.where(m, p, 0))


def test_stylize_matches_the_model_and_keeps_odd_sizes(ticket, stylizer):
  _, model, vgg, _, trained, _ = ticket
  content, style = images(0, (1, 32, 40, 3), (1, 24, 32, 3))
  want = np.asarray(jax.jit(model.stylize, static_argnums=4)(trained, vgg, content, style, 0.6))
  np.testing.assert_allclose(stylizer.stylize(content, style, alpha=0.6), want, rtol=1e-5, atol=1e-6)
  odd_c, odd_s = images(1, (37, 45, 3), (29, 23, 3))
  out = stylizer.stylize(odd_c, odd_s)
  assert out.shape == (37, 45, 3) and out.dtype == np.float32
  want = jax.jit(model.stylize_any_size)(trained, vgg, odd_c[None], odd_s[None])
  np.testing.assert_allclose(out, np.asarray(want)[0], rtol=1e-5, atol=1e-6)
  # One style for a batch of contents is broadcast.
  batch = stylizer.stylize(np.stack([odd_c, odd_c[::-1]]), odd_s[None])
  np.testing.assert_allclose(batch[0], out, rtol=1e-5, atol=1e-6)


def test_style_mix_is_the_weighted_sum_of_single_styles(stylizer):
  content, s1, s2 = images(2, (32, 40, 3), (24, 32, 3), (24, 32, 3))
  a, b = stylizer.stylize(content, s1), stylizer.stylize(content, s2)
  np.testing.assert_allclose(stylizer.stylize_mix(content, [s1, s2], [1, 3]), 0.25 * a + 0.75 * b, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_array_equal(stylizer.stylize_mix(content, [s1, s2], [2, 0]), a)
  with pytest.raises(UserError, match="do not fit 2 style"):
    stylizer.stylize_mix(content, [s1, s2], [1.0])
  with pytest.raises(UserError, match="not all zero"):
    inference.mix_weights([0, 0], 2)


def test_yiq_by_hand():
  red = np.array([1.0, 0.0, 0.0], np.float32)
  np.testing.assert_allclose(inference.rgb_to_yiq(red), [0.299, 0.595716, 0.211456], rtol=1e-6)
  x = images(3, (5, 7, 3))[0]
  np.testing.assert_allclose(inference.yiq_to_rgb(inference.rgb_to_yiq(x)), x, atol=1e-6)


def test_preserve_color_keeps_the_content_chroma(stylizer):
  content, style = images(4, (1, 37, 45, 3), (1, 29, 23, 3))
  out = stylizer.stylize(content, style, preserve_color=True)
  m = np.array([[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]])
  np.testing.assert_allclose((out @ m.T)[..., 1:], (content @ m.T)[..., 1:], atol=1e-5)
  # The luminance is the model's output on the luminance images (style Y matched to the content's statistics).
  gray_c, gray_s = inference.luminance_inputs(content, style)
  assert np.allclose(gray_c[..., 0], gray_c[..., 2])
  np.testing.assert_allclose(gray_s[..., 0].mean(), (content @ m[0]).mean(), rtol=1e-4)
  np.testing.assert_allclose(gray_s[..., 0].std(), (content @ m[0]).std(), rtol=1e-3)
  y = stylizer.stylize(gray_c, gray_s) @ m[0]
  np.testing.assert_allclose(out @ m[0], y, atol=1e-5)


def test_stylize_reads_vgg_only_with_a_fixed_encoder(stylizer):
  assert not inference.stylize_reads_vgg(stylizer.model, stylizer.params, stylizer.vgg_params)
  fixed = models.build("adain", {**tiny_config().model.to_dict(), "train_encoder": False})
  vgg = stylizer.vgg_params
  params = jax.device_get(fixed.init(jax.random.PRNGKey(0), vgg))
  assert inference.stylize_reads_vgg(fixed, params, vgg)


def test_from_ported_loads_model_json_and_params(tmp_path, ticket):
  _, model, vgg, params, _, _ = ticket
  folder = tmp_path / "ported"
  checkpoint.save_params(str(folder / "params"), {"params": params, "vgg": vgg})
  cfg = tiny_config().model.to_dict()
  checkpoint.save_json(str(folder / "model.json"), {"model": "adain", "model_config": cfg})
  ported = inference.Stylizer.from_ported(str(folder))
  content, style = images(5, (32, 40, 3), (24, 32, 3))
  np.testing.assert_array_equal(ported.stylize(content, style), inference.Stylizer(model, params, vgg).stylize(
      content, style))
  # A model.json of another width does not fit the saved params: the error names the leaf.
  checkpoint.save_json(str(folder / "model.json"), {"model": "adain", "model_config": {**cfg, "width": 0.125}})
  with pytest.raises(UserError, match=r"do not fit adain: '.*kernel' has shape"):
    inference.Stylizer.from_ported(str(folder))
  with pytest.raises(UserError, match="no_such_dir"):
    inference.Stylizer.from_ported(str(tmp_path / "no_such_dir"))


def test_from_ticket_errors_name_the_path(tmp_path, ticket):
  missing = tmp_path / "runs" / "tickets" / "imp" / "rep_0" / "round_09"
  with pytest.raises(UserError, match=re.escape(f"No ticket at '{missing}'")):
    inference.Stylizer.from_ticket(str(missing))
  # A ticket moved out of its workdir has no config.json three levels up.
  moved = tmp_path / "a" / "b" / "c" / "rep_0" / "round_03"
  os.makedirs(moved.parent)
  os.symlink(ticket[0], moved)
  with pytest.raises(UserError, match=re.escape(f"'{tmp_path / 'a' / 'config.json'}' does not exist")):
    inference.Stylizer.from_ticket(str(moved))
  with pytest.raises(UserError, match="which = 'best'"):
    inference.Stylizer.from_ticket(ticket[0], which="best")
  with pytest.raises(UserError, match=r"shape \(4, 4\)"):
    inference.Stylizer.from_ticket(ticket[0]).stylize(np.zeros((4, 4)), np.zeros((4, 4, 3)))
