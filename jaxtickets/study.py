"""The paper's comparisons as one job: python -m jaxtickets.study --config=configs/study_adain.py[:demo].

For every model in config.models, sub-runs (each an imp.run in WORKDIR/<model>/<run>) on top of the model's
own config (configs/<model>.py:<config.variant>, then config.overrides, fields by section such as
{'train': {'steps': 6}}). Each sub-run is the fields it changes (sub_runs), set in a copy of that config in Python
(with_changes):
  reference        the model's config, IMP plus the baselines (finding 2: IMP vs random pruning/reinit, one-shot)
  encoder_fixed    the other choice of model.train_encoder (finding 1: training the encoder beats fixing it)
  transform_dense  the scope without the transform group, or transform_pruned with it (finding 3), only for
                   models that have transform parameters
  rewind_<k>       ('rewind') IMP rewound to step k, for each k of config.rewind_steps, with the stability
                   (linear mode connectivity) of each round: which rewind point makes tickets, and why
  early_bird       ('early_bird') IMP whose dense round stops once its mask settles, against the reference's
                   IMP at the same sparsity: the quality it costs and the steps it saves
Then WORKDIR/study.md and WORKDIR/study.png (report_study.write_study) compare them (finding 4: tickets for every
model). imp.run skips finished tickets, so running the same command again resumes.
"""

if __name__ == "__main__":  # first, before the heavy imports: it may re-execute this command under tcmalloc
  from jaxtickets import tcmalloc  # pylint: disable=g-import-not-at-top
  tcmalloc.preload()

import copy
import dataclasses
import importlib.util
import json
import os
import shutil

from absl import app, flags
import jax
import ml_collections

from jaxtickets import config as config_lib, storage
from jaxtickets.run import imp
from jaxtickets.reports import run_report as report_run, study_report as report_study
from jaxtickets.weights import files as weights
from jaxtickets import errors
from jaxtickets.errors import UserError

COMPARISONS = ("encoder", "transform", "baselines", "rewind", "early_bird")


@dataclasses.dataclass
class SubRun:
  model: str
  name: str
  config: ml_collections.ConfigDict
  workdir: str


def configs_dir(study_config) -> str:
  """Where configs/<model>.py live: config.configs_dir, else the repository's configs/ folder."""
  if study_config.get("configs_dir"):
    return study_config.configs_dir
  return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def variant_config(name: str, variant: str, folder: str) -> ml_collections.ConfigDict:
  """configs/<name>.py's get_config(variant)."""
  path = os.path.join(folder, f"{name}.py")
  if not os.path.isfile(path):
    raise UserError(f"The study needs '{path}' for model {name!r}: write it, or set config.configs_dir.")
  spec = importlib.util.spec_from_file_location(f"_study_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  try:
    return module.get_config(variant)
  except ValueError as e:
    raise UserError(f"'{path}' has no variant {variant!r} ({e}); set config.variant.") from None


def field_items(changes, prefix: str = "") -> list[tuple[str, object]]:
  """[('section.field', value), ...] of `changes`, a mapping whose keys are dotted fields ('imp.branches') or
  sections that hold more of them ({'imp': {'branches': 'imp'}}, what a ConfigDict of overrides is)."""
  out = []
  for key, value in changes.items():
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      out += field_items(value, f"{prefix}{key}.")
    else:
      out.append((f"{prefix}{key}", value))
  return out


def with_changes(config, changes, what: str) -> ml_collections.ConfigDict:
  """A copy of `config` with every field of `changes` (field_items) set; a field the config lacks or a value of the
  wrong type is a UserError that names `what` asked for it."""
  out = copy.deepcopy(config)
  for key, value in field_items(changes):
    *sections, field = key.split(".")
    try:
      node = out
      for section in sections:
        node = node[section]
      if field not in node:
        raise KeyError(field)
      node[field] = value
    except (KeyError, AttributeError, TypeError) as e:
      raise UserError(f"{what} sets {key} = {value!r}, which the model config does not take "
                      f"({type(e).__name__}: {e}); fix or remove it.") from None
  return out


def _has_transform(config) -> bool:
  from jaxtickets.models import get_model

  return "transform" in get_model(config.model.name)(config.model).groups


def plan(study_config, workdir: str) -> tuple[list[SubRun], list[str]]:
  """The sub-runs of the study and notes on comparisons that do not apply."""
  comparisons = config_lib.split_list(study_config.comparisons)
  bad = [c for c in comparisons if c not in COMPARISONS]
  if bad:
    raise UserError(f"config.comparisons names {bad[0]!r}: choose from {', '.join(COMPARISONS)}.")
  models = config_lib.split_list(study_config.models)
  if not models:
    raise UserError("config.models is empty: name at least one model, e.g. 'adain'.")
  runs, notes = [], []
  for name in models:
    base = variant_config(name, study_config.variant, configs_dir(study_config))
    base.model.name = name
    base = with_changes(base, study_config.overrides, "config.overrides")
    runs += [SubRun(name, run, with_changes(base, changes, f"The {run} sub-run"), os.path.join(workdir, name, run))
             for run, changes in sub_runs(study_config, comparisons, base, notes)]
  return runs, notes


def sub_runs(study_config, comparisons: list[str], base, notes: list[str]) -> list[tuple[str, dict]]:
  """(name, {field: value}) of each of one model's sub-runs: the fields its config changes in `base`, the model's
  config with the study's overrides. Adds to `notes` why a comparison does not apply to the model."""
  name = base.model.name
  baselines = config_lib.split_list(study_config.baselines) if "baselines" in comparisons else []
  out = [("reference", {"imp.branches": ",".join(["imp"] + baselines)})]
  imp_only = {"imp.branches": "imp"}  # the comparisons beside the reference compare IMP's tickets alone
  if "encoder" in comparisons:
    out.append(("encoder_fixed" if base.model.train_encoder else "encoder_trained",
                {**imp_only, "model.train_encoder": not base.model.train_encoder}))
  if "transform" in comparisons:
    scope = config_lib.split_list(base.sparsity.scope)
    rest = [p for p in scope if p.strip("/").split("/")[0] != "transform"]
    if not _has_transform(base):
      notes.append(f"{name} has no transform parameters (its feature transformation is parameter-free), so "
                   "finding 3 does not apply to it.")
    elif not rest:
      notes.append(f"{name}'s scope prunes only the transform, so there is no run without it.")
    elif rest != scope:
      out.append(("transform_dense", {**imp_only, "sparsity.scope": ",".join(rest)}))
    else:
      out.append(("transform_pruned", {**imp_only, "sparsity.scope": ",".join(scope + ["transform"])}))
  if "rewind" in comparisons:
    out += [(f"rewind_{k}", {**imp_only, "imp.rewind_step": k}) for k in rewind_points(study_config, base)]
  if "early_bird" in comparisons:
    out.append(("early_bird", {**imp_only, "imp.early_bird": True}))
  return out


def rewind_points(study_config, base) -> list[int]:
  """config.rewind_steps as step numbers; entries like '0.5%' are that share of a round's steps."""
  points = []
  for item in config_lib.split_list(study_config.get("rewind_steps", "")):
    try:
      k = round(float(item[:-1]) / 100 * base.train.steps) if item.endswith("%") else int(item)
    except ValueError:
      raise UserError(f"config.rewind_steps has {item!r}: write step numbers or shares of a round like "
                      "'0,0.5%,2%'.") from None
    if not 0 <= k < base.train.steps:
      raise UserError(f"config.rewind_steps has {item!r} = step {k}, outside [0, train.steps = {base.train.steps}).")
    points.append(k)
  if not points:
    raise UserError("config.comparisons has 'rewind' but config.rewind_steps is empty: list the rewind points, e.g. "
                    "'0,0.5%,2%'.")
  return list(dict.fromkeys(points))


def run(study_config, workdir: str, *, reports: bool | None = None) -> str | None:
  """Runs (or resumes) every sub-run, then writes study.md and its figures; returns study.md's path."""
  from jaxtickets.core import parallel  # pylint: disable=g-import-not-at-top

  runs, notes = plan(study_config, workdir)
  reports = study_config.get("reports", True) if reports is None else reports
  # Every sub-run's config checked (on every host) before the first trains: a bad one does not wait hours. A relative
  # config.model.vgg_weights that is not here is where the sub-run found it (a study resumed from another directory).
  resolved = parallel.agree(lambda: [config_lib.checked_settings(
      sub.config, vgg_weights=weights.locate_run_vgg(sub.config.model.vgg_weights, sub.workdir, imp.log))
      for sub in runs])
  for i, (sub, run_settings) in enumerate(zip(runs, resolved), start=1):
    imp.log(f"=== study {i}/{len(runs)}: {sub.model} / {sub.name} -> {sub.workdir}")
    same = next((earlier for earlier in runs[:i - 1] if same_imp(earlier, sub)), None)
    if same is not None:
      share_imp(same, sub)
    imp.run(run_settings, sub.workdir)
    if sub.name.startswith("rewind_"):
      from jaxtickets.run import stability  # pylint: disable=g-import-not-at-top

      stability.run(sub.workdir)
    if reports:
      report_run.write_report(sub.workdir, run_settings)
  if jax.process_index() != 0:
    return None
  trained = [report_study.StudyRun(sub.model, sub.name, sub.workdir, run_settings)
             for sub, run_settings in zip(runs, resolved)]
  path = report_study.write_study(trained, notes, workdir, study_models=study_config.models,
                                  variant=study_config.variant, reports=reports,
                                  overrides=field_items(study_config.overrides))
  imp.log(f"Study report: {path}")
  return path


def same_imp(a: SubRun, b: SubRun) -> bool:
  """Whether b's IMP tickets are a's: the same model and config but for the baselines beside IMP (e.g. a rewind
  sweep's point at the reference's rewind step)."""
  strip = lambda c: {**json.loads(c.to_json()), "imp": {**json.loads(c.imp.to_json()), "branches": None}}
  return a.model == b.model and strip(a.config) == strip(b.config)


def share_imp(source: SubRun, sub: SubRun) -> None:
  """Links source's saved IMP tickets and rewind points into sub's workdir (a copy where links cannot be made), so
  sub's run loads them instead of training the same runs again. Tickets are never rewritten, so links are safe."""
  from jaxtickets.store import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

  if not sub.config.resume:
    return  # the run moves whatever is there aside
  done = False
  if jax.process_index() == 0:
    for part in (workdir_lib.INIT, os.path.join(workdir_lib.TICKETS, "imp")):
      src, dst = os.path.join(source.workdir, part), os.path.join(sub.workdir, part)
      if storage.isdir(src):
        done = _share_tree(src, dst) or done
  if jax.process_count() > 1:  # the other processes look for the tickets only once they are there
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("jaxtickets: study shared IMP tickets")
  if done:
    imp.log(f"{sub.name}: its IMP runs are {source.name}'s (the same config but the baselines beside IMP): "
            f"linked {source.workdir}'s IMP tickets and rewind points instead of training them again.")


def _share_tree(src: str, dst: str) -> bool:
  """Makes `dst` hold `src`'s files (unless it already exists); whether anything was shared.

  On disk: hard links, built beside `dst` and renamed into place, so an interrupted study never leaves half a
  ticket. On an object store (no links, no rename): each missing object copied, Orbax's completion markers last, so
  a ticket whose copy was cut short is incomplete (trained again), and the next run copies what is missing.
  """
  if not storage.is_url(src) and not storage.is_url(dst):
    if os.path.exists(dst):
      return False
    partial = f"{dst}.sharing"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(src, partial, copy_function=_link_or_copy)
    os.rename(partial, dst)
    return True
  files = sorted(storage.walk_files(src), key=lambda p: os.path.basename(p) == _ORBAX_COMPLETE)
  shared = False
  for path in files:
    target = dst + path[len(src.rstrip("/")):]
    if not storage.exists(target):
      storage.write_atomically(target, storage.read_bytes(path))
      shared = True
  return shared


_ORBAX_COMPLETE = "commit_success.txt"  # the file whose presence finishes an Orbax checkpoint on an object store


def _link_or_copy(src: str, dst: str) -> None:
  try:
    os.link(src, dst)
  except OSError:  # another file system, or one without hard links
    shutil.copy2(src, dst)


FLAGS = flags.FLAGS


def define_flags() -> None:
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string("workdir", None, "Where the sub-runs and study.md go (default: config.workdir).")
  config_flags.DEFINE_config_file("config", None, "A study config, e.g. configs/study_adain.py or "
                                  "configs/study_adain.py:demo.", lock_config=True)


def main(argv):
  def work():
    config = FLAGS.config
    if config is None:
      raise UserError("Pass a study config: python -m jaxtickets.study --config=configs/study_adain.py:demo")
    return run(config, FLAGS.workdir or config.workdir)

  # A preempted sub-run's checkpoint is saved; the same command resumes the whole study.
  path = errors.run_command(work, "jaxtickets.study", argv)
  if path:
    print(f"The study's report is {path}.")


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=config_lib.parse_flags)
