"""A run's settings as typed, frozen values: config.resolve turns the ConfigDict into them once, at the entry, and the
code below takes only the parts it reads (the model's spec, the data's, the step's, the protocol's, the packing)."""

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Which model, built how, and the loss network's weights."""
  name: str
  options: Any  # a FrozenConfigDict: config.model with train.dtype (when set) as the compute dtype; the model reads it
  vgg_weights: str  # a Flax-format VGG file or folder, 'demo', or '' (random)
  init_from: str  # scripts/port_weights.py's --out, or ''
  seed: int  # draws the random stand-in VGG when vgg_weights is '' (config.seed: every replicate shares it)

  @property
  def width(self) -> float:
    return self.options.width

  @property
  def dtype(self) -> str:
    return self.options.dtype


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """Where the images come from and how they are cut; the held-out pairs."""
  content: str  # a folder, 'tfds:NAME:SPLIT' or 'demo'
  style: str
  eval_content: str  # '' = hold out num_pairs images of the training source
  eval_style: str
  tfds_data_dir: str
  tfds_image_key: str
  load_size: int
  crop_size: int
  num_threads: int
  prefetch: int
  num_pairs: int  # held-out (content, style) pairs every ticket is scored on
  seed: int  # the held-out split and the pairs' crops (config.seed: every replicate shares them)

  def source(self, what: str) -> str:
    """The source of one side ('content', 'style', 'eval_content', 'eval_style'), stripped."""
    return (getattr(self, what) or "").strip()


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """How each round trains (config.train, with config.checkpoint's interval)."""
  batch_size: int
  steps: int  # per round
  lr: float
  schedule: str  # train.SCHEDULE names: 'inverse', 'epoch_step', 'cosine'
  warmup_steps: int
  lr_decay: float
  adam_eps: float
  epoch_steps: int
  lr_constant_epochs: int
  lr_epoch_factor: float
  nan_policy: str  # 'stop' or 'skip'
  log_every: int
  checkpoint_every: int


@dataclasses.dataclass(frozen=True)
class Pruning:
  """How a round prunes."""
  scope: tuple[str, ...]  # groups or globs such as 'decoder/conv3_*'
  method: str  # 'global', 'layerwise' or 'lamp'
  fraction: float  # of the surviving weights, per round
  layer_cap: float  # global pruning never empties a layer beyond this fraction; 1.0 = off


@dataclasses.dataclass(frozen=True)
class EarlyBird:
  """The dense round's early-bird test (early_bird.Watch)."""
  every: int
  epsilon: float
  patience: int


@dataclasses.dataclass(frozen=True)
class Protocol:
  """What IMP runs: rounds, branches, replicates, the rewind point, and how its verdicts are judged."""
  seed: int  # replicate r's seed is seed + r
  rounds: int
  replicates: int
  rewind_step: int
  branches: tuple[str, ...]  # IMP first
  target_sparsity: float  # 0 = off
  match_tolerance: float
  pruning: Pruning
  early_bird: EarlyBird | None
  eval_batch_size: int


@dataclasses.dataclass(frozen=True)
class Packing:
  """How many runs train side by side: 1 without packing, a number asked for, or 0 (auto)."""
  runs_per_step: int

  @property
  def auto(self) -> bool:
    return self.runs_per_step == 0


@dataclasses.dataclass(frozen=True)
class Checkpointing:
  keep: int
  async_save: bool


@dataclasses.dataclass(frozen=True)
class RunSettings:
  """Everything a run reads, resolved: the entry hands each part to the code that needs it."""
  model: ModelSpec
  data: DataSpec
  step: StepSettings
  protocol: Protocol
  packing: Packing
  checkpointing: Checkpointing
  resume: bool
  # The config as config.json keeps it: a resume is held to it, a report shows it.
  record: dict = dataclasses.field(default_factory=dict, compare=False, hash=False)
