"""What the model stages share: the net spec from config, the data split, seeded generators."""

from pathlib import Path

import numpy as np

from pipeline.config import Config
from pipeline.io import load_arrays
from pipeline.net import NetSpec

PREPROCESSED = Path("data/preprocessed")

# Each stage draws from its own stream of the one seed, so adding draws to one stage never
# changes the numbers of another.
STREAMS = {"sanity": 1, "lr_search": 2, "train": 3, "init_study": 4, "bn_study": 5}


def net_spec(cfg: Config, input_dim: int = 3072) -> NetSpec:
    m = cfg.model
    return NetSpec(input_dim=input_dim, hidden_dims=tuple(m.hidden_dims),
                   activation=m.activation.value, init=m.init.value,
                   weight_scale=m.weight_scale, bias_init=m.bias_init,
                   leaky_slope=m.leaky_slope, elu_alpha=m.elu_alpha,
                   maxout_pieces=m.maxout_pieces, batchnorm=m.batchnorm,
                   bn_momentum=m.bn_momentum, bn_eps=m.bn_eps, dropout=m.dropout)


def rng(cfg: Config, stream: str, *keys: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, STREAMS[stream], *keys])


def load_split(cfg: Config, *names: str) -> list[np.ndarray]:
    """Arrays of the preprocessing variant that `preprocess.mode` names, e.g. "X_train"."""
    folder = PREPROCESSED / cfg.preprocess.mode.value
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is missing: run `dvc repro preprocess` first")
    return load_arrays(folder, *names)
