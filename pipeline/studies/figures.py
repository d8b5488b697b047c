"""PNG figures of the studies, drawn from the same rows that go into the CSV tables.

Every figure says what it shows in its title, labels both axes with their units and has a
legend; colours follow the order of the inits (or runs) in the config, so one init has the
same colour in every figure. Saved without a timestamp, so a rerun gives the same bytes.
"""

import math
from pathlib import Path

from matplotlib import colormaps
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from pipeline.studies.layer_stats import BOUNDS

COLOURS = colormaps["tab10"].colors
MARKERS = "os^vDP*X"  # a second cue where lines overlap (relu and leaky_relu, often)
DPI = 90
NO_METADATA = {"Software": None}


def subplots(rows: int, cols: int, figsize: tuple[float, float],
             layout: str | None = "constrained", **kwargs):
    """A Figure outside pyplot: no global state to leak, rendered by Agg when saved."""
    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(rows, cols, **kwargs)


def save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, metadata=NO_METADATA)


def _select(rows: list[dict], **match) -> list[dict]:
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def _ordered(rows: list[dict], key: str) -> list:
    """Distinct values of rows[key] in order of first appearance (the config's order)."""
    return list(dict.fromkeys(r[key] for r in rows))


def _column(rows: list[dict], key: str) -> list:
    return [r[key] for r in rows]


# ---- init_study ---------------------------------------------------------------------------

def _flat_panels(activation: str) -> list[tuple[str, str]]:
    """What "no gradient passes" means for this activation, as (column, label) pairs."""
    if activation in BOUNDS:
        first = ("saturated", "saturated outputs, |h| near a bound (fraction)")
    elif activation == "maxout":
        first = ("inactive", "affine pieces that lose the max (fraction)")
    else:
        first = ("inactive", "outputs with f'(z) = 0 (fraction)")
    dead = "pieces that never win" if activation == "maxout" else "dead units, f'(z) = 0"
    return [first, ("dead", f"{dead} on every example (fraction)")]


def layer_profiles(rows: list[dict], title: str, activation: str):
    """Per layer: activations (mean, std), gradients (dL/dh, dL/dW), saturated and dead units."""
    fig, axes = subplots(2, 3, (15, 8))
    flat, dead = _flat_panels(activation)
    panels = [("act_mean", "mean of activations h", "symlog"),
              ("act_std", "std of activations h", "log"),
              (*flat, "linear"),
              ("grad_std", "std of gradient dL/dh", "log"),
              ("dW_std", "std of weight gradient dL/dW", "log"),
              (*dead, "linear")]
    for ax, (key, label, scale) in zip(axes.flat, panels):
        for colour, init in zip(COLOURS, _ordered(rows, "init")):
            picked = _select(rows, init=init)
            ax.plot(_column(picked, "layer"), _column(picked, key), "o-", color=colour,
                    label=init)
        if scale == "symlog":
            # linear within +-1, where tanh and healthy ReLU means sit (a collapsed mean
            # reads as 0), logarithmic beyond, where exploding ReLU means go
            ax.set_yscale("symlog", linthresh=1.0)
            low, high = ax.get_ylim()
            ax.set_ylim(min(low, -1.0), max(high, 1.0))
        else:
            ax.set_yscale(scale)
        ax.set(xlabel="hidden layer", ylabel=label.split(",")[0], title=label)
        ax.title.set_fontsize(10)
        ax.set_xticks(sorted(set(_column(rows, "layer"))))
        ax.grid(alpha=0.3)
    axes[0, 0].legend(title="init")
    fig.suptitle(title)
    return fig


def histogram_grid(hist_rows: list[dict], stat_rows: list[dict], title: str):
    """The lecture's picture: one row of per-layer activation histograms per init."""
    inits = _ordered(hist_rows, "init")
    layers = _ordered(hist_rows, "layer")
    # fixed margins: a layout engine costs seconds on a grid of 40 axes
    fig, axes = subplots(len(inits), len(layers), (1.9 * len(layers), 1.9 * len(inits) + 0.8),
                         layout=None, sharey="row", squeeze=False,
                         gridspec_kw={"left": 0.06, "right": 0.99, "bottom": 0.08,
                                      "top": 0.9, "wspace": 0.15, "hspace": 0.6})
    for row, (colour, init) in enumerate(zip(COLOURS, inits)):
        total = sum(r["count"] for r in _select(hist_rows, init=init, layer=layers[0]))
        for col, layer in enumerate(layers):
            ax = axes[row, col]
            bins = _select(hist_rows, init=init, layer=layer)
            edges = [bins[0]["low"]] + _column(bins, "high")
            ax.stairs([r["count"] / total for r in bins], edges, fill=True, color=colour)
            std = _select(stat_rows, init=init, layer=layer)[0]["act_std"]
            ax.set_title(f"layer {layer}, std {std:.2g}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.locator_params(axis="x", nbins=3)
            ax.xaxis.get_offset_text().set_fontsize(7)
        axes[row, 0].set_ylabel(f"{init}\nfraction of h", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("activation h", fontsize=8)
    fig.suptitle(f"{title}: histograms of activations, one shared range per row")
    return fig


def variance_check(rows: list[dict], title: str):
    """Measured Var(z) against the product rule (top) and against Xavier's chain (bottom)."""
    inits = _ordered(rows, "init")
    fig, axes = subplots(2, len(inits), (4.2 * len(inits) + 2, 8.5), squeeze=False)
    for col, init in enumerate(inits):
        top, bottom = axes[0, col], axes[1, col]
        for colour, marker, activation in zip(COLOURS, MARKERS, _ordered(rows, "activation")):
            picked = _select(rows, init=init, activation=activation)
            layers = _column(picked, "layer")
            top.plot(layers, _column(picked, "var_measured"), "-", color=colour,
                     label=activation)
            top.plot(layers, _column(picked, "var_product"), "x", color=colour)
            bottom.plot(layers, [r["var_measured"] / r["var_xavier"] for r in picked],
                        f"{marker}-", color=colour, label=activation, markersize=5)
        top.plot([], [], "kx", label="product rule")
        bottom.axhline(1.0, color="black", lw=1, ls=":", label="ratio 1: Xavier holds")
        bottom.axhline(0.5, color="grey", lw=1, ls="--", label="ratio 1/2: ReLU halves")
        top.set(yscale="log", title=f"{init}: Var(z_l), measured (line) vs product rule (x)",
                xlabel="hidden layer", ylabel="variance of pre-activations z_l")
        bottom.set_yscale("log", base=2)
        bottom.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        bottom.set(title=f"{init}: measured / Xavier's prediction", xlabel="hidden layer",
                   ylabel="Var(z_l) / (fan_in Var(w) Var(z_l-1))")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            ax.title.set_fontsize(9)
    handles, labels = axes[1, 0].get_legend_handles_labels()
    cross, _ = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles + cross[-1:], labels + ["x: product rule"], loc="outside right center",
               title="activation", fontsize=8)
    fig.suptitle(f"{title}: variance of pre-activations, theory beside measurement")
    return fig


def symmetry(rows: list[dict]):
    """Tables as heatmaps, activation x layer, after the last SGD step: distinct units of the
    all-zero net and of a random one, and how far the all-zero net's weights moved."""
    steps = max(_column(rows, "step"))
    final = _select(rows, step=steps)
    inits = _ordered(final, "init")
    units = final[0]["units"]
    panels = [(init, "distinct_units", f"init {init}: distinct units (of {units})")
              for init in inits]
    panels.append((inits[0], "weight_norm", f"init {inits[0]}: ||W_l|| (0: never moved)"))
    activations = _ordered(final, "activation")
    layers = _ordered(final, "layer")
    fig, axes = subplots(1, len(panels), (5.5 * len(panels), 0.5 * len(activations) + 2))
    for ax, (init, key, title) in zip(axes, panels):
        grid = [[_select(final, init=init, activation=a, layer=layer)[0][key] for layer in layers]
                for a in activations]
        ax.imshow(grid, cmap="viridis", aspect="auto", norm=_norm(grid))
        for i, row in enumerate(grid):
            for j, value in enumerate(row):
                text = str(value) if isinstance(value, int) else f"{value:.2g}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if value > 0 else "black")
        ax.set(xticks=range(len(layers)), xticklabels=layers, yticks=range(len(activations)),
               yticklabels=activations, xlabel="hidden layer", ylabel="activation",
               title=title)
        ax.title.set_fontsize(10)
    fig.suptitle(f"Symmetry after {steps} SGD steps: the all-zero net keeps one unit per layer")
    return fig


def _norm(grid):
    values = [v for row in grid for v in row if v > 0]
    if not values:
        return None
    return LogNorm(min(values) / 2, max(values) * 2)


def init_figures(folder: Path, results) -> None:
    """Every init_study figure into `folder`."""
    for source in _ordered(results.layers, "input"):
        rows = _select(results.layers, input=source)
        save(variance_check(rows, _source_title(source)), folder / f"{source}_variance.png")
        for activation in _ordered(rows, "activation"):
            picked = _select(rows, activation=activation)
            title = f"{activation}, {_source_title(source)}"
            save(layer_profiles(picked, title, activation),
                 folder / f"{source}_{activation}_layers.png")
            hists = _select(results.histograms, input=source, activation=activation)
            save(histogram_grid(hists, picked, title),
                 folder / f"{source}_{activation}_histograms.png")
    save(symmetry(results.symmetry), folder / "zero_init_symmetry.png")


def _source_title(source: str) -> str:
    return {"gaussian": "unit-Gaussian input", "cifar10": "CIFAR-10 input"}.get(source, source)


# ---- bn_study ---------------------------------------------------------------------------

CHANCE = 0.1


def _kinds(rows: list[dict]):
    for colour, (kind, bn) in zip(COLOURS, (("plain", False), ("batch norm", True))):
        yield colour, kind, _select(rows, batchnorm=bn)


def sweep_figure(rows: list[dict], key: str, label: str, title: str):
    """Final accuracy (left) and loss (right) against the swept value, plain vs BN."""
    fig, (left, right) = subplots(1, 2, (13, 5))
    for colour, kind, picked in _kinds(rows):
        x = _column(picked, key)
        left.plot(x, _column(picked, "val_acc"), "o-", color=colour, label=f"{kind}: val")
        left.plot(x, _column(picked, "train_acc"), "s--", color=colour, alpha=0.6,
                  label=f"{kind}: train")
        right.plot(x, _column(picked, "train_loss"), "s--", color=colour, alpha=0.6,
                   label=f"{kind}: train")
        right.plot(x, _column(picked, "val_loss"), "o-", color=colour, label=f"{kind}: val")
        diverged = _select(picked, status="diverged")
        left.plot(_column(diverged, key), _column(diverged, "val_acc"), "kx", markersize=10,
                  label="_")
    left.plot([], [], "kx", label="diverged (loss > 3x its start)")
    left.axhline(CHANCE, color="grey", ls=":", lw=1, label="chance (10 classes)")
    left.set(xscale="log", xlabel=label, ylabel="accuracy (fraction)", ylim=(0, 1),
             title="final accuracy")
    right.set(xscale="log", yscale="log", xlabel=label, ylabel="cross-entropy loss (nats)",
              title="final loss, in test mode (nan for a net full of inf: not drawn)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def loss_curves(rows: list[dict], curves: list[dict], key: str, label: str, title: str):
    """Loss per step of every run of one sweep: one panel per value, plain vs BN, with the
    diagnosis of each run in the legend."""
    values = sorted(set(_column(rows, key)))
    cols = min(4, len(values))
    grid_rows = math.ceil(len(values) / cols)
    fig, axes = subplots(grid_rows, cols, (4.5 * cols, 3.5 * grid_rows), squeeze=False)
    for ax, value in zip(axes.flat, values):
        for colour, kind, picked in _kinds(_select(rows, **{key: value})):
            run = picked[0]
            steps = _select(curves, batchnorm=run["batchnorm"], **{key: value})
            ax.plot(_column(steps, "step"), _column(steps, "loss"), color=colour, lw=0.8,
                    label=f"{kind}: {short_diagnosis(run['diagnosis'])}")
        losses = [r["loss"] for r in _select(curves, **{key: value}) if r["loss"] > 0]
        if max(losses) > 10 * min(losses):  # exploding nets start many decades up
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        ax.set(title=f"{label} {value:.1e}", xlabel="step", ylabel="training loss (nats)")
        ax.title.set_fontsize(10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(values):]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig


def short_diagnosis(names: str) -> str:
    """"lr_too_low,ratio_low_W1,ratio_low_W2" -> "lr_too_low, ratio_low (2 layers)"."""
    plain, ratios = [], {}
    for name in names.split(","):
        kind, _, layer = name.rpartition("_W")
        if name.startswith("ratio_") and layer.isdigit():
            ratios[kind] = ratios.get(kind, 0) + 1
        else:
            plain.append(name)
    plain += [f"{kind} ({n} layer{'s' * (n > 1)})" for kind, n in ratios.items()]
    return ", ".join(plain)


def bn_figures(folder: Path, rows: list[dict], curves: list[dict], net: str) -> None:
    """Every bn_study figure into `folder`; `net` names the net in the titles."""
    scale_rows, lr_rows = _select(rows, sweep="scale"), _select(rows, sweep="lr")
    scale_curves, lr_curves = _select(curves, sweep="scale"), _select(curves, sweep="lr")
    lr = scale_rows[0]["lr"]
    scale = lr_rows[0]["weight_scale"]
    save(sweep_figure(scale_rows, "weight_scale", "std of the gaussian init (weight scale)",
                      f"{net}, with and without batch normalization (lr {lr:g})"),
         folder / "accuracy_vs_weight_scale.png")
    save(sweep_figure(lr_rows, "lr", "learning rate",
                      f"{net}, learning rates with and without batch normalization "
                      f"(weight scale {scale:g})"),
         folder / "accuracy_vs_lr.png")
    save(loss_curves(scale_rows, scale_curves, "weight_scale", "weight scale",
                     "Loss curves per weight scale, with the diagnosis of each run"),
         folder / "loss_curves_weight_scale.png")
    save(loss_curves(lr_rows, lr_curves, "lr", "lr",
                     "Loss curves per learning rate, with the diagnosis of each run"),
         folder / "loss_curves_lr.png")
