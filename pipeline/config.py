"""The config every stage reads: params.yaml, checked against a schema before any work.

DVC composes `conf/` into `params.yaml` (Hydra composition is enabled in .dvc/config), so a
stage never composes on its own: it reads params.yaml, applies any `key=value` overrides from
its command line, and checks keys, types and values here. An unknown key or a bad value stops
the stage with a message that names the key.
"""

import sys
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

PARAMS_FILE = "params.yaml"


class ConfigError(ValueError):
    pass


class Mode(str, Enum):
    mean_image = "mean_image"
    per_channel = "per_channel"


class Activation(str, Enum):
    sigmoid = "sigmoid"
    tanh = "tanh"
    relu = "relu"
    leaky_relu = "leaky_relu"
    prelu = "prelu"
    elu = "elu"
    maxout = "maxout"


class Init(str, Enum):
    zeros = "zeros"
    gaussian = "gaussian"
    unit_gaussian = "unit_gaussian"
    xavier = "xavier"
    glorot = "glorot"
    he = "he"


class UpdateRule(str, Enum):
    sgd = "sgd"
    sgd_momentum = "sgd_momentum"
    nesterov = "nesterov"
    adam = "adam"


@dataclass
class DataConfig:
    archive: str = "data/cifar-10-python.tar.gz"
    md5: dict[str, str] = field(default_factory=dict)
    num_train: int = 49000
    num_val: int = 1000
    num_test: int = 10000


@dataclass
class PreprocessConfig:
    mode: Mode = Mode.mean_image
    scale_std: bool = True


@dataclass
class ModelConfig:
    hidden_dims: list[int] = field(default_factory=lambda: [50])
    activation: Activation = Activation.relu
    init: Init = Init.gaussian
    weight_scale: float = 0.01  # conf/model/two_layer.yaml sets 1e-4
    bias_init: float = 0.0
    leaky_slope: float = 0.01
    elu_alpha: float = 1.0
    maxout_pieces: int = 2
    batchnorm: bool = False
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    dropout: float = 0.0


@dataclass
class SanityConfig:
    num_images: int = 500
    loss_tol: float = 0.05
    reg: float = 1e3
    overfit_images: int = 20
    overfit_epochs: int = 200
    overfit_lr: float = 1e-2
    grad_images: int = 5
    grad_checks: int = 20
    grad_tol: float = 1e-7


@dataclass
class ProbeConfig:
    low_lr: float = 1e-6
    high_lr: float = 1e6
    steps: int = 100
    num_train: int = 5000


@dataclass
class CoarseConfig:
    trials: int = 30
    epochs: int = 3
    num_train: int = 10000
    lr: list[float] = field(default_factory=lambda: [1e-5, 1e-1])
    reg: list[float] = field(default_factory=lambda: [1e-5, 1e1])


@dataclass
class FineConfig:
    trials: int = 15
    epochs: int = 10
    num_train: int = 49000
    span: float = 1.0


class SearchBackend(str, Enum):
    serial = "serial"
    local = "local"
    ray = "ray"


@dataclass
class BudgetConfig:
    trials: int | None = None
    seconds: float | None = None


@dataclass
class EarlyStopConfig:
    chance_tol: float = 0.01


@dataclass
class RayClusterConfig:
    address: str | None = None


@dataclass
class SearchConfig:
    batch_size: int = 200
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    coarse: CoarseConfig = field(default_factory=CoarseConfig)
    fine: FineConfig = field(default_factory=FineConfig)
    max_widen: int = 2
    edge: float = 0.1
    backend: SearchBackend = SearchBackend.serial
    workers: int | None = None
    blas_threads: int = 1
    retries: int = 2
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    ray: RayClusterConfig = field(default_factory=RayClusterConfig)


@dataclass
class TrainConfig:
    lr: float | None = None
    reg: float | None = None
    epochs: int = 30
    batch_size: int = 200
    lr_decay: float = 0.9


@dataclass
class OptimConfig:
    update_rule: UpdateRule = UpdateRule.sgd_momentum
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8


@dataclass
class FinetuneConfig:
    checkpoint: str | None = None
    last_layer_only: bool = False


@dataclass
class TrackingConfig:
    uri: str | None = None
    experiment: str = "cifar10-babysitting"
    flush_every: int = 1000


@dataclass
class InitStudyConfig:
    depth: int = 10
    width: int = 500
    input_dim: int = 500
    num_samples: int = 1000
    cifar_images: int = 1000
    inits: list[Init] = field(default_factory=lambda: [
        Init.gaussian, Init.unit_gaussian, Init.xavier, Init.he])
    weight_scale: float = 0.01
    activations: list[str] = field(default_factory=list)
    bins: int = 40
    saturation: float = 0.99
    zero_steps: int = 5
    zero_lr: float = 0.1


@dataclass
class BnStudyConfig:
    hidden_dims: list[int] = field(default_factory=lambda: [50] * 8)
    activation: Activation = Activation.relu
    num_train: int = 4000
    weight_scales: list[float] = field(default_factory=lambda: [1e-4, 1e1])
    num_scales: int = 11
    epochs: int = 10
    batch_size: int = 100
    update_rule: UpdateRule = UpdateRule.adam
    lr: float = 1e-3
    lrs: list[float] = field(default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1])
    lr_weight_scale: float = 0.1


@dataclass
class StudyConfig:
    init: InitStudyConfig = field(default_factory=InitStudyConfig)
    bn: BnStudyConfig = field(default_factory=BnStudyConfig)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sanity: SanityConfig = field(default_factory=SanityConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    seed: int = 0


def load(params: str | Path = PARAMS_FILE, overrides: list[str] = ()) -> Config:
    """Read params.yaml, apply `key=value` overrides, check it all; return plain dataclasses."""
    path = Path(params)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; run stages from the repository root")

    raw = OmegaConf.load(path)
    if overrides:
        raw = OmegaConf.merge(raw, OmegaConf.from_dotlist(list(overrides)))
    return from_dict(raw)


def from_dict(raw) -> Config:
    """Check a mapping (dict or DictConfig) against the schema and the value rules."""
    schema = OmegaConf.structured(Config)
    try:
        merged = OmegaConf.merge(schema, raw)
    except OmegaConfBaseException as err:
        raise ConfigError(_explain(err)) from None

    cfg = OmegaConf.to_object(merged)
    check_values(cfg)
    return cfg


def _explain(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    message = str(err).splitlines()[0]
    if "not in struct" in message or "Key" in message and "not" in message:
        return f"unknown config key '{key}'"
    return f"invalid value for '{key}': {message}"


def check_values(cfg: Config) -> None:
    """Value rules a schema cannot express; each message names the key."""
    problems = []

    def need(ok: bool, key: str, rule: str, value) -> None:
        if not ok:
            problems.append(f"{key} must be {rule}, got {value!r}")

    d = cfg.data
    need(bool(d.md5), "data.md5", "a non-empty map of source name -> md5", d.md5)
    for name, digest in d.md5.items():
        need(_is_md5(digest), f"data.md5.{name}", "32 hex digits", digest)
    need(d.num_train > 0, "data.num_train", "> 0", d.num_train)
    need(d.num_val > 0, "data.num_val", "> 0", d.num_val)
    need(d.num_train + d.num_val <= 50000, "data.num_train + data.num_val",
         "<= 50000", d.num_train + d.num_val)
    need(0 < d.num_test <= 10000, "data.num_test", "in 1..10000", d.num_test)

    m = cfg.model
    need(len(m.hidden_dims) > 0, "model.hidden_dims", "a non-empty list", m.hidden_dims)
    for i, units in enumerate(m.hidden_dims):
        need(units > 0, f"model.hidden_dims[{i}]", "> 0", units)
    need(m.weight_scale > 0, "model.weight_scale", "> 0", m.weight_scale)
    need(0 <= m.leaky_slope < 1, "model.leaky_slope", "in [0, 1)", m.leaky_slope)
    need(m.elu_alpha > 0, "model.elu_alpha", "> 0", m.elu_alpha)
    need(m.maxout_pieces >= 2, "model.maxout_pieces", ">= 2", m.maxout_pieces)
    need(0 <= m.bn_momentum < 1, "model.bn_momentum", "in [0, 1)", m.bn_momentum)
    need(m.bn_eps > 0, "model.bn_eps", "> 0", m.bn_eps)
    need(0 <= m.dropout < 1, "model.dropout", "in [0, 1)", m.dropout)

    s = cfg.sanity
    for key in ("num_images", "overfit_images", "overfit_epochs", "grad_images", "grad_checks"):
        need(getattr(s, key) > 0, f"sanity.{key}", "> 0", getattr(s, key))
    for key in ("loss_tol", "reg", "overfit_lr", "grad_tol"):
        need(getattr(s, key) > 0, f"sanity.{key}", "> 0", getattr(s, key))

    _check_search(cfg.search, need)
    _check_train(cfg.train, need)
    _check_optim(cfg.optim, need)
    need(cfg.finetune.checkpoint is None or cfg.finetune.checkpoint.strip() != "",
         "finetune.checkpoint", "a path or null", cfg.finetune.checkpoint)
    need(cfg.finetune.checkpoint is not None or not cfg.finetune.last_layer_only,
         "finetune.last_layer_only", "false without finetune.checkpoint",
         cfg.finetune.last_layer_only)
    _check_init_study(cfg.study.init, need)
    _check_bn_study(cfg.study.bn, need)
    need(cfg.tracking.flush_every > 0, "tracking.flush_every", "> 0", cfg.tracking.flush_every)
    need(cfg.seed >= 0, "seed", ">= 0", cfg.seed)

    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def _check_search(s: SearchConfig, need) -> None:
    need(s.batch_size > 0, "search.batch_size", "> 0", s.batch_size)
    need(s.probe.low_lr > 0, "search.probe.low_lr", "> 0", s.probe.low_lr)
    need(s.probe.high_lr > s.probe.low_lr, "search.probe.high_lr", "> search.probe.low_lr",
         s.probe.high_lr)
    need(s.probe.steps > 0, "search.probe.steps", "> 0", s.probe.steps)
    need(s.probe.num_train > 0, "search.probe.num_train", "> 0", s.probe.num_train)
    for stage in ("coarse", "fine"):
        sub = getattr(s, stage)
        for key in ("trials", "epochs", "num_train"):
            need(getattr(sub, key) > 0, f"search.{stage}.{key}", "> 0", getattr(sub, key))
    for key in ("lr", "reg"):
        bounds = getattr(s.coarse, key)
        ok = len(bounds) == 2 and 0 < bounds[0] < bounds[1]
        need(ok, f"search.coarse.{key}", "[low, high] with 0 < low < high", bounds)
    need(s.fine.span > 0, "search.fine.span", "> 0", s.fine.span)
    need(s.max_widen >= 0, "search.max_widen", ">= 0", s.max_widen)
    need(0 <= s.edge < 0.5, "search.edge", "in [0, 0.5)", s.edge)
    need(s.workers is None or s.workers > 0, "search.workers", "> 0 or null", s.workers)
    need(s.blas_threads > 0, "search.blas_threads", "> 0", s.blas_threads)
    need(s.retries >= 0, "search.retries", ">= 0", s.retries)
    b = s.budget
    need(b.trials is None or b.trials > 0, "search.budget.trials", "> 0 or null", b.trials)
    need(b.seconds is None or b.seconds > 0, "search.budget.seconds", "> 0 or null", b.seconds)
    need(s.early_stop.chance_tol >= 0, "search.early_stop.chance_tol", ">= 0",
         s.early_stop.chance_tol)


def _check_train(t: TrainConfig, need) -> None:
    need(t.lr is None or t.lr > 0, "train.lr", "> 0 or null", t.lr)
    need(t.reg is None or t.reg >= 0, "train.reg", ">= 0 or null", t.reg)
    need(t.epochs > 0, "train.epochs", "> 0", t.epochs)
    need(t.batch_size > 0, "train.batch_size", "> 0", t.batch_size)
    need(0 < t.lr_decay <= 1, "train.lr_decay", "in (0, 1]", t.lr_decay)


def _check_optim(o: OptimConfig, need) -> None:
    need(0 <= o.momentum < 1, "optim.momentum", "in [0, 1)", o.momentum)
    need(0 <= o.beta1 < 1, "optim.beta1", "in [0, 1)", o.beta1)
    need(0 <= o.beta2 < 1, "optim.beta2", "in [0, 1)", o.beta2)
    need(o.eps > 0, "optim.eps", "> 0", o.eps)


def _check_init_study(s: InitStudyConfig, need) -> None:
    # imported here: the schema module stays free of the numpy net it describes
    from pipeline.studies.propagation import study_activations

    for key in ("depth", "width", "input_dim", "num_samples", "bins", "zero_steps"):
        need(getattr(s, key) > 0, f"study.init.{key}", "> 0", getattr(s, key))
    need(s.cifar_images >= 0, "study.init.cifar_images", ">= 0", s.cifar_images)
    need(len(s.inits) > 0 and len(set(s.inits)) == len(s.inits), "study.init.inits",
         "a non-empty list without repeats", s.inits)
    need(Init.zeros not in s.inits, "study.init.inits",
         "random inits (zeros has its own symmetry check)", s.inits)
    need(s.weight_scale > 0, "study.init.weight_scale", "> 0", s.weight_scale)
    known = study_activations()
    for i, name in enumerate(s.activations):
        need(name in known, f"study.init.activations[{i}]", f"one of {', '.join(known)}", name)
    need(0 < s.saturation < 1, "study.init.saturation", "in (0, 1)", s.saturation)
    need(s.zero_lr > 0, "study.init.zero_lr", "> 0", s.zero_lr)


def _check_bn_study(s: BnStudyConfig, need) -> None:
    need(len(s.hidden_dims) > 0, "study.bn.hidden_dims", "a non-empty list", s.hidden_dims)
    for i, units in enumerate(s.hidden_dims):
        need(units > 0, f"study.bn.hidden_dims[{i}]", "> 0", units)
    for key in ("num_train", "epochs", "batch_size", "lr", "lr_weight_scale"):
        need(getattr(s, key) > 0, f"study.bn.{key}", "> 0", getattr(s, key))
    bounds = s.weight_scales
    need(len(bounds) == 2 and 0 < bounds[0] < bounds[1], "study.bn.weight_scales",
         "[low, high] with 0 < low < high", bounds)
    need(s.num_scales >= 2, "study.bn.num_scales", ">= 2", s.num_scales)
    need(len(s.lrs) > 0 and all(lr > 0 for lr in s.lrs), "study.bn.lrs",
         "a non-empty list of values > 0", s.lrs)


def _is_md5(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value.lower())


def flatten(cfg: Config) -> dict[str, str]:
    """Dotted keys for MLflow params: {"train.lr": "0.001", ...}."""
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, name + ".")
            else:
                flat[name] = str(value)

    walk(OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True), "")
    return flat


def from_argv(argv: list[str] | None = None) -> Config:
    """Stage entry: params.yaml plus `key=value` arguments; exits with the message on error."""
    args = sys.argv[1:] if argv is None else argv
    try:
        return load(PARAMS_FILE, args)
    except ConfigError as err:
        sys.exit(f"config error: {err}")


VALID_MARKER = Path("results/config/valid")


def main() -> None:
    """Stage check_config: check params.yaml, then write a marker that never changes."""
    from_argv()
    VALID_MARKER.parent.mkdir(parents=True, exist_ok=True)
    VALID_MARKER.write_text("params.yaml passed the schema and value checks\n")


if __name__ == "__main__":
    main()
