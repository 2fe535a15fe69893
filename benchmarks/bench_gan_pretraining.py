"""Few labels: GAN-discriminator pretraining vs autoencoder vs none (run by hand, not a test).

    python benchmarks/bench_gan_pretraining.py [--seeds 10] [--scale full] [--threads 1]

Claim 10's setup ("unsupervised pretraining helps when labels are scarce", the "pretraining"
claim): MNIST-1D, a 3x100 ELU MLP, 200 labeled training samples drawn per seed; scratch: Nadam lr
1e-3 for 30 epochs on them; pretrained: the MLP's hidden layers (the same initial weights as
scratch) pretrained on every training input, then ``reuse``d with a new head and ``fine_tune``d,
5 epochs frozen and 25 more, Nadam lr 1e-3 throughout. The autoencoder arm is the claim's own
(Adam lr 1e-3, 10 epochs); the GAN arm trains the same hidden layers as the discriminator's lower
layers (``gradwell.pretrain.gan``, its defaults: Adam lr 2e-4, beta1 0.5, batches of 64) for the
same 10 epochs. Every arm sees the same seeds, labeled samples and initial weights; the table gives
each arm's mean test accuracy (all 10 classes) and the paired differences with 95% t intervals.
Each seed runs claim 10's own trial (``gradwell.experiment.claims.trials.pretraining_trial``).
"""

from __future__ import annotations

import argparse
import time

import torch

from gradwell.experiment import paired, summarize
from gradwell.experiment.claims.trials import PRETRAININGS, SCALES, pretraining_trial

ARMS = ("scratch", *PRETRAININGS)


def interval(ci: tuple[float, float] | None, sign: str = "") -> str:
    return "-" if ci is None else f"[{ci[0]:{sign}.4f}, {ci[1]:{sign}.4f}]"


def number(value: float | None, sign: str = "") -> str:
    return "-" if value is None else f"{value:{sign}.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scale, start = SCALES[args.scale], time.perf_counter()
    runs = []
    for seed in range(args.seeds):
        runs.append(pretraining_trial(seed, scale=scale)["extra"])  # claim 10's own trial
        print(f"seed {seed}: " + ", ".join(f"{arm} {runs[-1][arm]:.4f}" for arm in ARMS), flush=True)
    values = {arm: [run[arm] for run in runs] for arm in ARMS}
    print(f"\nscale {scale.name}, {scale.few_labels} labels, {args.seeds} seeds, test accuracy")
    print(f"{'arm':<12} {'mean':>7} {'std':>7}  95% interval of the mean")
    for arm in ARMS:
        s = summarize(values[arm])
        print(f"{arm:<12} {number(s.mean):>7} {number(s.std):>7}  {interval(s.ci)}")
    print(f"\n{'paired difference (A - B)':<28} {'mean':>8}  {'95% interval':<20} {'p (t)':>7}  verdict")
    for a, b in (("gan", "scratch"), ("autoencoder", "scratch"), ("gan", "autoencoder")):
        p = paired(values[a], values[b], names=(a, b), metric="test_accuracy")
        p_t = "-" if p.p_t is None else f"{p.p_t:.3g}"
        pair, mean = f"{a} - {b}", number(p.mean_difference, "+")
        print(f"{pair:<28} {mean:>8}  {interval(p.ci, '+'):<20} {p_t:>7}  {p.verdict}")
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
