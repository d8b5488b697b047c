"""Throughput of one training step (forward + backward + update) at batch 200, in images/s.

    python -m benchmarks.train_step                 # 1 thread and all cores, both nets
    python -m benchmarks.train_step --threads 2 --rounds 5 --seconds 3

For each net and thread count it prints:
- numpy: the product's own step, `solver.gradients` then `solver.apply_update` (SGD with
  momentum 0.9, L2 on the weights, float32, BN in train mode), as the training loop runs it;
- GEMM floor: the same step's matrix products (forward x W, backward x^T dout and
  dout W^T) timed one by one on the same shapes and layouts, summed: no step can be faster.
  `share` is floor time / step time; the rest of a step is elementwise work (BN, ReLU,
  softmax, the update) and Python;
- torch: the same model (Linear, BatchNorm1d, ReLU, cross-entropy, SGD with momentum and
  weight decay on the weights only), when PyTorch is installed.

Every measurement runs in a fresh process whose BLAS / OpenMP pools are set to the thread
count before numpy or torch loads: two thread pools in one process spin against each other
and slow both. numpy and torch alternate, round after round, and each keeps its best round:
on a shared machine the best is the closest to the uncontended speed. The load average is
printed next to the figures. PyTorch is not a dependency of the product.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

BATCH = 200
INPUT_DIM = 3072
NUM_CLASSES = 10
LR, REG, MOMENTUM = 1e-3, 1e-3, 0.9
NETS = {
    "3072-50-10": {"hidden_dims": (50,), "batchnorm": False},
    "3072-500-500-10 BN": {"hidden_dims": (500, 500), "batchnorm": True},
}
THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


# ---- workers: one measurement each, in their own process --------------------------------

def _time_blocks(step, seconds: float, block: int) -> list[float]:
    """Seconds per call of `step`, averaged over blocks of `block` calls, for ~`seconds`."""
    for _ in range(3):
        step()  # warm up: first-touch allocations, BLAS buffers, thread pools
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        start = time.perf_counter()
        for _ in range(block):
            step()
        times.append((time.perf_counter() - start) / block)
    return times


def _block_size(step) -> int:
    """Calls per timed block: about 50 ms of work, so timer overhead is negligible."""
    start = time.perf_counter()
    step()
    return max(1, int(0.05 / max(time.perf_counter() - start, 1e-6)))


def _summary(times: list[float]) -> dict:
    return {"best": min(times), "median": statistics.median(times)}


def numpy_worker(net_name: str, seconds: float) -> dict:
    import numpy as np

    from pipeline import net, solver

    shape = NETS[net_name]
    spec = net.NetSpec(input_dim=INPUT_DIM, hidden_dims=shape["hidden_dims"],
                       num_classes=NUM_CLASSES, init="he", batchnorm=shape["batchnorm"])
    rng = np.random.default_rng(0)
    params, state = net.init_params(spec, rng), net.init_state(spec)
    X = rng.standard_normal((BATCH, INPUT_DIM)).astype(np.float32)
    y = rng.integers(0, NUM_CLASSES, BATCH)
    schedule = solver.Schedule(lr=LR, reg=REG, epochs=1, batch_size=BATCH,
                               update_rule="sgd_momentum", momentum=MOMENTUM)
    states: dict = {}

    def step():
        _, grads = solver.gradients(params, X, y, spec, REG, state=state)
        solver.apply_update(params, grads, states, schedule, LR)

    times = _time_blocks(step, seconds, _block_size(step))
    return {**_summary(times), "gemm_floor": gemm_floor(spec, rng, seconds / 10)}


def gemm_floor(spec, rng, seconds: float) -> float:
    """Sum over the step's matrix products of the best time of each alone, same layouts."""
    import numpy as np

    total = 0.0
    for layer, (fan_in, fan_out) in enumerate(spec.affine_shapes(), start=1):
        x = rng.standard_normal((BATCH, fan_in)).astype(np.float32)
        W = rng.standard_normal((fan_in, fan_out)).astype(np.float32)
        dout = rng.standard_normal((BATCH, fan_out)).astype(np.float32)
        products = [lambda: x @ W, lambda: x.T @ dout]  # forward; dW
        if layer > 1:
            products.append(lambda: dout @ W.T)  # dx; the first layer needs none
        for product in products:
            total += min(_time_blocks(product, seconds, _block_size(product)))
    return total


def torch_worker(net_name: str, seconds: float, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    shape = NETS[net_name]
    dims = (INPUT_DIM, *shape["hidden_dims"], NUM_CLASSES)
    layers = []
    for fan_in, fan_out in zip(dims[:-2], dims[1:-1]):
        layers.append(torch.nn.Linear(fan_in, fan_out))
        if shape["batchnorm"]:
            # torch's momentum weighs the new batch: 0.1 is our 0.9
            layers.append(torch.nn.BatchNorm1d(fan_out, eps=1e-5, momentum=1 - MOMENTUM))
        layers.append(torch.nn.ReLU())
    layers.append(torch.nn.Linear(dims[-2], dims[-1]))
    model = torch.nn.Sequential(*layers).train()

    weights = [m.weight for m in model if isinstance(m, torch.nn.Linear)]
    others = [p for p in model.parameters() if all(p is not w for w in weights)]
    optimiser = torch.optim.SGD([{"params": weights, "weight_decay": REG},
                                 {"params": others, "weight_decay": 0.0}],
                                lr=LR, momentum=MOMENTUM)
    loss_fn = torch.nn.CrossEntropyLoss()
    X = torch.randn(BATCH, INPUT_DIM)
    y = torch.randint(0, NUM_CLASSES, (BATCH,))

    def step():
        optimiser.zero_grad(set_to_none=True)
        loss_fn(model(X), y).backward()
        optimiser.step()

    return _summary(_time_blocks(step, seconds, _block_size(step)))


# ---- orchestration ------------------------------------------------------------------------

def torch_available() -> bool:
    found = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True)
    return found.returncode == 0


def run_worker(engine: str, net_name: str, threads: int, seconds: float) -> dict:
    env = {**os.environ, **{name: str(threads) for name in THREAD_ENV}}
    cmd = [sys.executable, "-m", "benchmarks.train_step", "--worker", engine, "--net",
           net_name, "--threads", str(threads), "--seconds", str(seconds)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def measure(net_name: str, threads: int, seconds: float, rounds: int,
            with_torch: bool) -> dict:
    """Best of `rounds` alternating numpy / torch measurements."""
    found: dict = {"numpy": [], "torch": []}
    for _ in range(rounds):
        found["numpy"].append(run_worker("numpy", net_name, threads, seconds))
        if with_torch:
            found["torch"].append(run_worker("torch", net_name, threads, seconds))
    best = {engine: min(runs, key=lambda r: r["best"]) for engine, runs in found.items()
            if runs}
    best["gemm_floor"] = min(r["gemm_floor"] for r in found["numpy"])
    return best


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            names = [line.split(":", 1)[1].strip() for line in info
                     if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.machine()


def rate(seconds_per_step: float) -> float:
    return BATCH / seconds_per_step


def report_line(net_name: str, threads: int, m: dict) -> str:
    numpy_step = m["numpy"]["best"]
    line = (f"{net_name:<20} {threads:>3}  {rate(numpy_step):>9,.0f}  "
            f"{rate(m['numpy']['median']):>9,.0f}  {rate(m['gemm_floor']):>9,.0f}  "
            f"{m['gemm_floor'] / numpy_step:>5.0%}")
    if "torch" in m:
        torch_step = m["torch"]["best"]
        line += (f"  {rate(torch_step):>9,.0f}  {rate(m['torch']['median']):>9,.0f}  "
                 f"{torch_step / numpy_step:>7.2f}x")
    return line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cores = os.cpu_count() or 1
    parser.add_argument("--threads", default=",".join(sorted({"1", str(cores)})),
                        help="comma-separated thread counts (default: 1 and all cores)")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per engine")
    parser.add_argument("--net", choices=list(NETS), action="append",
                        help="net(s) to measure (default: all)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    parser.add_argument("--worker", choices=["numpy", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        net_name = args.net[0]
        threads = int(args.threads)
        result = (numpy_worker(net_name, args.seconds) if args.worker == "numpy"
                  else torch_worker(net_name, args.seconds, threads))
        print(json.dumps(result))
        return

    with_torch = not args.no_torch and torch_available()
    print(f"batch {BATCH}, float32, SGD momentum {MOMENTUM}; best of {args.rounds} rounds of "
          f"{args.seconds:g} s; {cpu_name()}, {cores} cores, load average "
          f"{os.getloadavg()[0]:.2f} at start")
    header = (f"{'net':<20} {'thr':>3}  {'numpy':>9}  {'(median)':>9}  {'GEMM floor':>9}  "
              f"{'share':>5}")
    if with_torch:
        header += f"  {'torch':>9}  {'(median)':>9}  {'np/torch':>8}"
    print(header + "   [images/s]")
    for net_name in args.net or NETS:
        for threads in (int(t) for t in args.threads.split(",")):
            m = measure(net_name, threads, args.seconds, args.rounds, with_torch)
            print(report_line(net_name, threads, m), flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
