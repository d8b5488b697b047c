"""Every activation of the net, bound to its hyperparameters behind one interface.

`pipeline.layers` has the primitives; here each becomes a `Nonlinearity`:
`forward(x, alpha) -> (out, cache)` and `backward(dout, cache) -> (dx, dalpha)`, where alpha
is the learned PReLU slope (None, and dalpha None, for every other activation).

`piece(cache)` names the linear piece each output is on, for the activations whose derivative
jumps: x > 0 for ReLU, leaky ReLU and PReLU, the winning piece for maxout, and x > 0 for ELU
too, whose second derivative jumps at 0 (and its first unless alpha = 1). A numeric gradient
whose +-h step changes a piece straddles a kink; `pipeline.gradcheck` leaves it out.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from pipeline.layers import (
    ACTIVATIONS,
    elu_backward,
    elu_forward,
    leaky_relu_backward,
    leaky_relu_forward,
    maxout_backward,
    maxout_forward,
    prelu_backward,
    prelu_forward,
)

ACTIVATION_NAMES: tuple[str, ...] = (*ACTIVATIONS, "prelu", "maxout")


@dataclass(frozen=True)
class Nonlinearity:
    forward: Callable[[np.ndarray, np.ndarray | None], tuple[np.ndarray, Any]]
    backward: Callable[[np.ndarray, Any], tuple[np.ndarray, np.ndarray | None]]
    piece: Callable[[Any], np.ndarray] | None = None  # None: smooth everywhere
    pieces: int = 1  # affine outputs per unit
    learned_slope: bool = False  # one learned slope per unit, the param alpha_l


def _fixed(forward, backward, piece=None) -> Nonlinearity:
    """An activation without learned parameters."""
    return Nonlinearity(forward=lambda x, _: forward(x),
                        backward=lambda dout, cache: (backward(dout, cache), None),
                        piece=piece)


def _input_positive(cache) -> np.ndarray:
    return cache[0] > 0


def _relu_positive(cache: np.ndarray) -> np.ndarray:
    return cache > 0


def _maxout_winner(cache) -> np.ndarray:
    return cache[1]


def bind(name: str, *, leaky_slope: float = 0.01, elu_alpha: float = 1.0,
         maxout_pieces: int = 2) -> Nonlinearity:
    """The activation `name` with its hyperparameters fixed."""
    if name == "prelu":
        return Nonlinearity(prelu_forward, prelu_backward, _input_positive, learned_slope=True)
    if name == "maxout":
        return Nonlinearity(lambda x, _: maxout_forward(x, maxout_pieces),
                            lambda dout, cache: (maxout_backward(dout, cache), None),
                            _maxout_winner, pieces=maxout_pieces)
    if name == "leaky_relu":
        return _fixed(partial(leaky_relu_forward, slope=leaky_slope), leaky_relu_backward,
                      _input_positive)
    if name == "elu":
        return _fixed(partial(elu_forward, alpha=elu_alpha), elu_backward, _input_positive)
    if name == "relu":
        forward, backward = ACTIVATIONS[name]
        return _fixed(forward, backward, _relu_positive)
    if name in ACTIVATIONS:
        return _fixed(*ACTIVATIONS[name])
    raise ValueError(f"unknown activation {name!r}; allowed: {', '.join(ACTIVATION_NAMES)}")
