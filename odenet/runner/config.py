"""Typed config schemas for ``python -m odenet.run``: a misspelt key or a wrong type fails at start.

The schema is registered in Hydra's ConfigStore as ``base_config``; ``conf/config.yaml`` builds on
it, and each config group (``conf/data/*.yaml``, ...) fills one of its nodes.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field as default
from pathlib import Path

from hydra import compose, initialize_config_dir, initialize_config_module
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig

from .errors import ConfigError

# From a source checkout the configs are in ../conf; installed, they ship as the package odenet.conf.
_SOURCE_CONF = Path(__file__).resolve().parents[2] / "conf"
CONFIG_PATH = str(_SOURCE_CONF) if (_SOURCE_CONF / "config.yaml").is_file() else "pkg://odenet.conf"


def experiment_dir() -> Path:
    """The folder of ``conf/experiment/*.yaml`` (in the source checkout, or inside the installed package)."""
    if not CONFIG_PATH.startswith("pkg://"):
        return Path(CONFIG_PATH) / "experiment"
    import importlib.resources

    return Path(str(importlib.resources.files("odenet.conf") / "experiment"))


@dataclass
class DataConfig:
    name: str = "sphere2"
    root: str | None = None  # folder holding MNIST / CIFAR-10 files
    n_train: int | None = None  # None: the data set's default size
    n_test: int | None = None
    seed: int = 0  # the data's own seed: fixed while the training seed varies
    dim: int = 2  # concentric_spheres dimension
    noise: float | None = None
    as_images: bool = False  # digits as 1x8x8 images
    synthetic: bool = False  # mnist / cifar10: class-patterned random images of the real shape, no files (smoke)
    augment: str = "none"  # image data, on the device per batch: none | crop | flip | crop_flip (random crop, h-flip)
    crop_padding: int = 4  # crop: zero-pad by this many pixels, then crop back to the image size at a random offset
    # hold out this fraction of the training set (drawn with data.seed) as a validation set: hyper-parameters are
    # chosen on it (objective: validation_accuracy), never on the test set
    validation: float = 0.0


@dataclass
class FieldConfig:
    kind: str = "mlp"  # mlp | conv | linear (F = W x, no bias)
    hidden: int = 32
    depth: int = 2
    activation: str = "tanh"
    time: str = "none"  # none | concat
    kernel: int = 3
    groupnorm: bool = False
    groups: int = 8
    untied: bool = False  # one weight set per step (DepthIndexedField over solver.steps)
    tied_init: bool = False  # untied only: every step starts from step 0's weights (an init smooth, constant, in depth)
    preact: bool = False  # conv: norm + activation before the first conv (Chen et al.'s field: norm, ReLU, conv, ...)
    zero_init: bool = False  # linear: W = 0 at init (Sander et al.); mlp / conv: the last layer's weight and bias = 0
    # mlp: default (PyTorch's) | he (variance-preserving for ReLU: N(0, 2/fan_in) before the activation, N(0, 1/fan_in)
    # for the last layer, zero biases; Balduzzi et al. 2017)
    init: str = "default"


@dataclass
class ModelConfig:
    width: int | None = None  # lift the input to this many features / channels (None: the input's own)
    augment_dim: int = 0  # ANODE (Dupont et al. 2019): zero dimensions (channels for images) appended to the state
    head: str = "linear"  # linear | identity (the block's output is the prediction: regression, state dim = targets)
    # images: lift (a 3x3 conv to `width` channels, if given) | downsample (Chen et al.: conv3x3, norm, ReLU,
    # conv4x4/2, norm, ReLU, conv4x4/2 to `width` (default 64) channels at 1/4 the size; head norm, ReLU, pool, linear)
    stem: str = "lift"
    init: str = "default"  # default | kaiming: N(0, 2/fan_in) weights, zero biases in every conv / linear (Ott et al.)
    # odenet: stem -> one block -> head | he: He et al. (2016)'s staged CIFAR net (odenet.staged): 3 stages of
    # solver.steps / 3 untied blocks at h = 1 on width (16), 2x, 4x channels, BN; depth 2 solver.steps + 2
    arch: str = "odenet"


@dataclass
class BlockConfig:
    kind: str = "residual"  # residual | plain | learned_steps | ode
    T: float = 1.0


@dataclass
class SolverConfig:
    name: str = "euler"
    steps: int | None = 8  # fixed schemes
    rtol: float = 1e-3  # adaptive solvers
    atol: float = 1e-4
    adjoint: bool = False
    max_steps: int = 10_000
    backend: str = "torchdiffeq"  # adaptive solvers: torchdiffeq, or odenet (its own dopri5, odenet.adaptive)


@dataclass
class OptimizerConfig:
    name: str = "adam"  # adam | sgd
    lr: float = 1e-2
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    nesterov: bool = False
    step_lr_scale: float = 1.0  # block=learned_steps: the step logits theta (h = T softmax(theta)) learn at scale x lr
    schedule: str = "none"  # none | cosine | step
    milestones: list[float] = default(default_factory=lambda: [0.5, 0.75])  # step schedule, as fractions of training
    gamma: float = 0.1


@dataclass
class TrainerConfig:
    iterations: int | None = 1000  # give iterations or epochs
    epochs: int | None = None
    batch_size: int = 128
    log_every: int = 50
    checkpoint_every: int = 200
    eval_batch_size: int = 1000
    progress: bool = True  # tqdm bar, shown only on a terminal
    # Mixed precision (torch.autocast) for the stem, head and fixed-step blocks; an adaptive ODE block always runs
    # in float32 (error control is not safe in half precision). float16 adds a GradScaler.
    amp: bool = False
    amp_dtype: str = "bfloat16"  # bfloat16 | float16
    # torch.compile the block's whole solve in place (state_dict keys unchanged; ODE block eager), the training
    # forward + loss as one graph (float32, no penalties) and Adam fused; an ensemble's batched forward + loss
    compile: bool = False
    # K > 1: train seeds seed, seed+1, ..., seed+K-1 of this config in one process as one batched ensemble
    # (torch.func.vmap), each member written to the run folder its separate run would use (odenet.runner.ensemble)
    ensemble: int = 1


@dataclass
class EvalSolverConfig:
    name: str = "euler"
    steps: int | None = None  # fixed step count, or
    step_factor: float | None = None  # test step = step_factor x training step
    rtol: float | None = None  # adaptive solvers (default 1e-6 / 1e-8)
    atol: float | None = None


@dataclass
class EvaluationConfig:
    solvers: list[EvalSolverConfig] = default(default_factory=list)


@dataclass
class AdaptationConfig:
    """Ott et al. (ICLR 2021)'s step-size adaptation during training (``odenet.adaptation``).

    Every ``every`` iterations the training batch's accuracy under the training solver (at step
    ``h``) is compared with that under ``test_solver``; a gap above ``threshold`` halves ``h``,
    otherwise ``increase * h`` is tried and kept only if its gap stays within ``threshold``.
    Accuracies are fractions of the batch (0..1), so ``threshold: 0.1`` is 10 percentage points.
    The block becomes a torchdiffeq fixed-grid ODE block (``step_size=h``, last step shorter).
    """

    enabled: bool = False
    every: int = 50  # k: iterations between checks
    threshold: float = 0.1  # largest accepted |acc_train - acc_test|, as a fraction (0.1 = 10 points)
    test_solver: str = "midpoint"
    # None: test solver at the same h. A number f: Ott et al.'s code rule for euler -> midpoint, a test
    # step sqrt(h / f) while that is below h (midpoint's error ~h_test^2 = h / f), else the same h.
    accuracy_factor: float | None = None
    decrease: float = 0.5  # h <- decrease * h when the gap is too large
    increase: float = 1.1  # growth tried when it is not
    initial_step_size: float | None = None  # None: block.T / solver.steps
    # fixed: initial_step_size | hairer: Hairer et al.'s starting-step heuristic on the first training batch at init
    # (Ott et al.'s code, find_initial_step_size, order 1 for euler), capped at max_step_size
    initial: str = "fixed"
    max_step_size: float | None = None  # None: block.T (one step)
    min_step_size: float | None = None  # None: block.T / 500 (Ott et al.'s max_steps)


@dataclass
class RegularizationConfig:
    """Penalties on the dynamics (Finlay et al. 2020), integrated alongside the state while training.

    The training loss is ``task loss + kinetic * int ||F||^2 dt + jacobian * int ||dF/dx||_F^2 dt`` (batch
    means; the Jacobian term by Hutchinson's estimator with one ``noise`` probe per sample and solve).
    A weight of 0 switches its penalty off (nothing extra is computed).
    """

    kinetic: float = 0.0
    jacobian: float = 0.0
    noise: str = "gaussian"  # gaussian | rademacher
    error_control: bool = True  # adaptive solvers: the penalty channels count in the error norm (false: state only)


@dataclass
class GrowthConfig:
    """Grow the block once during training (``odenet.growth``; the ``nested_growth`` experiment).

    After ``round(at x total)`` iterations the training loss on the whole training set is measured, the block is
    grown, the loss measured again, and training goes on (new parameters join the optimiser as a new group; the
    others keep their state). ``metrics.json["train"]["growth"]`` records both losses.
    """

    # none: no growth; control: measure at `at` but change nothing (the same run, continued);
    # identity / default: insert `insert` steps into an untied Euler stack, each a copy of its neighbouring layer
    # with the last layer zeroed (a residual step is then the identity), or redrawn by PyTorch's default init;
    # refine: steps x `factor` on the same [0, T]
    mode: str = "none"
    at: float = 0.5  # when: this fraction of the training iterations
    insert: int = 1  # identity / default: new steps, spread over the stack (odenet.growth.spread_positions)
    factor: int = 2  # refine: the step count's multiplier


@dataclass
class AnalysisConfig:
    """Measurements (``odenet.analysis``) on the model, written to ``metrics.json["analysis"]`` (all off by default).

    Every measurement uses the first ``points`` training examples (the whole batch at once), the model in
    eval mode and the task's loss (cross-entropy or MSE). ``gradients`` is taken at initialisation and after
    training; the others after training.
    """

    gradients: bool = False  # ||dL/dx_k|| at every state of the block (gradient flow)
    gradient_times: int = 32  # ODE blocks: intervals of [0, T] at which the state gradient is taken
    landscape: bool = False  # filter-normalised 1D and 2D random slices (Li et al. 2018)
    grid: int = 21  # points per axis of the slices (grid x grid in 2D)
    span: float = 1.0  # slices over [-span, span] in units of the filter-normalised direction
    interpolation: bool = False  # loss on the segment (1 - a) theta_init + a theta_trained, a in [-0.5, 1.5]
    sharpness: bool = False  # top Hessian eigenvalue (power iteration) and Hutchinson trace
    hessian_iters: int = 100
    hessian_tol: float = 1e-4
    trace_samples: int = 20
    depth: bool = False  # smoothness in depth of a depth-indexed field (field.untied): increments of theta_k
    trajectory: bool = False  # kinetic energy and ||x_{k+1} - x_k|| / h per step (not for plain nets)
    # the trained field re-solved by an adaptive solver (float64, no grad): accepted step sizes, start times, NFE
    adaptive_steps: bool = False
    adaptive_solver: str = "dopri5"
    adaptive_rtol: float = 1e-5
    adaptive_atol: float = 1e-5
    # shattered gradients (Balduzzi et al. 2017), at init and trained: d<u, logits>/ds along segments between
    # training examples of different classes (u a fixed random unit vector); autocorrelation and power spectrum
    shattering: bool = False
    shattering_lines: int = 8  # segments, each between two of the first analysis points with different labels
    shattering_points: int = 256  # equally spaced points per segment
    # block lesions of a stack (Veit et al. 2016), on the test set: accuracy after deleting each block, after
    # deleting k random blocks (k = 1, 2, 4, ... < N; lesion_draws sets per k); the relative update per block on
    # the analysis points, after training and at init (lesion_init, the control of its evenness)
    lesion: bool = False
    lesion_draws: int = 10
    # how much of its input the block keeps (vector states): Jacobian rank, R² of recovering the block input from
    # its output; and random ReLU / tanh / linear layers of widths d/8 .. 4d on the inputs (Sandler et al. 2018)
    identity: bool = False
    points: int = 512  # training examples used (all if fewer)
    seed: int = 0  # random directions and probes


@dataclass
class Config:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # torch intra-op CPU threads: auto (1: odenet's models are too small for intra-op parallelism to pay, and on
    # shared cores OpenMP threads spin-wait on each other; a sweep runs its jobs in parallel instead), N forces N,
    # null leaves torch's default (one per core). Applied in every run, joblib worker and report process.
    threads: typing.Any = "auto"  # auto | N >= 1 | null
    smoke: bool = False  # a smoke run (+debug=smoke): checks the machinery in seconds; its numbers mean nothing
    # what a job returns to Hydra's sweeper (one value, or several for a multi-objective search such as Optuna's):
    # test_accuracy | validation_accuracy | validation_loss | test_loss | train_loss | nfe
    objective: list[str] = default(default_factory=lambda: ["test_accuracy"])
    logger: str = "none"  # none | tensorboard (scalars per log step, step-size histograms: RUN_DIR/tensorboard)
    data: DataConfig = default(default_factory=DataConfig)
    field: FieldConfig = default(default_factory=FieldConfig)
    model: ModelConfig = default(default_factory=ModelConfig)
    block: BlockConfig = default(default_factory=BlockConfig)
    solver: SolverConfig = default(default_factory=SolverConfig)
    optimizer: OptimizerConfig = default(default_factory=OptimizerConfig)
    trainer: TrainerConfig = default(default_factory=TrainerConfig)
    evaluation: EvaluationConfig = default(default_factory=EvaluationConfig)
    adaptation: AdaptationConfig = default(default_factory=AdaptationConfig)
    regularization: RegularizationConfig = default(default_factory=RegularizationConfig)
    growth: GrowthConfig = default(default_factory=GrowthConfig)
    analysis: AnalysisConfig = default(default_factory=AnalysisConfig)


def job_dir_name(overrides: str) -> str:
    """A sweep job's folder: its own overrides (``seed=0,solver.steps=8``), so that re-running a sweep in another
    order, or with a value added, finds each job's earlier run; ``/`` is replaced and a long name is shortened
    with a hash."""
    import hashlib

    name = overrides.replace("/", "_").replace("\\", "_") or "job"
    if len(name) > 120:
        name = f"{name[:100]}-{hashlib.sha256(overrides.encode()).hexdigest()[:12]}"
    return name


def register_configs() -> None:
    """Put the schema into Hydra's ConfigStore as ``base_config`` (and the sweep-folder resolver)."""
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name="base_config", node=Config)
    OmegaConf.register_new_resolver("odenet_job_dir", job_dir_name, replace=True)


def load_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The composed config for ``overrides`` (as on the command line), without running anything.

    ``load_config(["+experiment=step_size_ablation", "+debug=smoke"])`` gives the config a job of
    that experiment would see (sweeps not expanded).
    """
    register_configs()
    if CONFIG_PATH.startswith("pkg://"):
        init = initialize_config_module(config_module="odenet.conf", version_base="1.3")
    else:
        init = initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3")
    with init:
        return compose(config_name="config", overrides=list(overrides))


def unknown_keys(cfg: DictConfig, schema: type = Config, prefix: str = "") -> list[str]:
    """Keys of ``cfg`` that the schema does not have (``+key=...`` adds them past the struct check)."""
    hints = typing.get_type_hints(schema)
    out = []
    for key in cfg.keys():
        if key == "hydra":
            continue
        full = f"{prefix}{key}"
        if key not in hints:
            out.append(full)
            continue
        kind, value = hints[key], cfg._get_node(key)
        if dataclasses.is_dataclass(kind) and isinstance(value, DictConfig):
            out += unknown_keys(value, kind, f"{full}.")
        elif isinstance(value, ListConfig):  # a list of dataclasses: evaluation.solvers
            item_kind = next(iter(typing.get_args(kind)), None)
            if dataclasses.is_dataclass(item_kind):
                for i, item in enumerate(value):
                    if isinstance(item, DictConfig):
                        out += unknown_keys(item, item_kind, f"{full}[{i}].")  # type: ignore[arg-type]
    return out


def check_keys(cfg: DictConfig) -> None:
    """A ConfigError naming the first key the schema does not know."""
    extra = unknown_keys(cfg)
    if extra:
        raise ConfigError(f"unknown config key {extra[0]}: not in the schema (odenet.runner.config.Config); check "
                          "its spelling (python -m odenet.run --cfg job shows every key)")


def _one_line(err: BaseException) -> str:
    """Hydra's / OmegaConf's multi-line composition error as one line naming the key and the fix."""
    import re

    text, cause = str(err), err.__cause__
    missing = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if missing:
        group, option = missing.groups()
        options = re.findall(r"^\t(\S+)$", text.split("Config search path")[0], flags=re.M)
        return f"unknown {group}={option}; {group} must be one of {options}"
    if cause is not None:
        head = str(cause).splitlines()[0].strip()
        key = re.search(r"full_key: (\S+)", str(cause))
        name = key.group(1) if key else None
        if "not in" in head and name:
            return f"unknown config key {name} ({head}); check its spelling (--cfg job shows every key)"
        if name:
            return f"{name}: {head}"
        return head
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return "; ".join(ln for ln in lines if not ln.startswith(("full_key:", "reference_type", "object_type")))


def precheck(argv: Sequence[str]) -> str | None:
    """The first error in composing the config of a command line, as one line (None: it composes).

    Each value of a sweep override (``a=1,2``) is tried on its own; hydra's own flags other than ``-m`` leave
    the check to Hydra.
    """
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in argv):
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = [a for a in argv if not a.startswith("-")]
    parser = OverridesParser.create()
    for arg in args:
        try:
            parser.parse_overrides([arg])
        except Exception as err:
            return f"cannot parse the override {arg!r}: {_one_line(err)}"
    parsed = parser.parse_overrides(args)
    base = [o.input_line for o in parsed if not o.is_sweep_override() and not o.key_or_group.startswith("hydra")]
    variants = [base]
    for o in parsed:
        if o.is_sweep_override() and not o.key_or_group.startswith("hydra"):
            variants += [[*base, f"{o.get_key_element()}={v}"] for v in o.sweep_string_iterator()]
    from .ranges import check_ranges

    for overrides in variants:
        try:
            cfg = load_config(overrides)
            check_keys(cfg)
        except Exception as err:
            return _one_line(err)
        shadowed = shadowed_data_choice(overrides, cfg)
        if shadowed:
            return shadowed
        try:
            check_ranges(cfg)
        except ValueError as err:
            return str(err)
    return None


def shadowed_data_choice(overrides: Sequence[str], cfg: DictConfig) -> str | None:
    """The error when ``data=X`` is given but a config composed after the data group (an experiment's task or setup
    file) sets another ``data.name``: the choice would be silently ignored."""
    from omegaconf import OmegaConf

    if any(o.partition("=")[0].lstrip("+~") == "data.name" for o in overrides):
        return None  # the data set named outright: that is the choice
    for o in overrides:
        key, _, value = o.partition("=")
        if key.lstrip("+~") != "data" or not value:
            continue
        option = Path(CONFIG_PATH) / "data" / f"{value}.yaml" if not CONFIG_PATH.startswith("pkg://") else None
        if option is None or not option.is_file():
            return None
        chosen = OmegaConf.load(option).get("name", value)
        if cfg.data.name != chosen:
            return (f"data={value} is overridden by the experiment's own config (it sets data.name={cfg.data.name}); "
                    f"add data.name={chosen} to the command line, or pick the experiment's task group instead")
    return None

