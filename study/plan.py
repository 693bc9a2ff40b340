"""The study's sweeps: every run behind docs/results.md, as `repgossip sweep` commands.

`python study/run.py [PART ...]` runs them (finished points are reused: each sweep runs with
`--resume`); `python study/report.py` turns their summaries into the tables and figures of
docs/results.md. Sizes are chosen to fit the whole study in a few hours on a 2-core CPU.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs" / "study"
RUNS = ROOT / "runs" / "study"

SEEDS3 = "0,1,2"
SEEDS5 = "0,1,2,3,4"
# Algorithms whose gossip follows the graph, and those that ignore it (no communication, or exact
# averaging): the latter run once per partition instead of once per topology.
GOSSIPING = "deprl,fedper,dpsgd,dfedavgm,ditto,fedrod,dispfl"
CENTRAL_OR_NONE = "local,fedrep,fedavg"
PARTITIONS = {"dirichlet": "alpha=0.1,0.5", "shards": "classes_per_worker=2,5"}


@dataclass(frozen=True)
class Sweep:
    """One `repgossip sweep`: its folder under runs/study, base config and grid."""

    part: str
    name: str
    config: str
    grid: tuple[str, ...]
    sets: tuple[str, ...] = field(default=())
    flags: tuple[str, ...] = field(default=())  # more options of `repgossip sweep`

    @property
    def out(self) -> Path:
        return RUNS / self.name

    def command(self, jobs: int) -> list[str]:
        # this interpreter's repgossip, so the study runs the code it was started with
        cmd = [sys.executable, "-m", "repgossip", "sweep", "--config", str(CONFIGS / self.config)]
        cmd += ["--out", str(self.out)]
        cmd += ["--grid", *self.grid]
        if self.sets:
            cmd += ["--set", *self.sets]
        cmd += list(self.flags)
        return [*cmd, "--jobs", str(jobs), "--resume", "--quiet"]


def _accuracy() -> list[Sweep]:
    sweeps = []
    for partition, knob in PARTITIONS.items():
        common = (f"partition={partition}", knob, f"seed={SEEDS3}")
        sweeps.append(
            Sweep("accuracy", f"accuracy-{partition}-gossip", "accuracy.yaml",
                  (f"algorithm={GOSSIPING}", "topology=ring,erdos_renyi", *common))
        )  # fmt: skip
        sweeps.append(
            Sweep("accuracy", f"accuracy-{partition}-central", "accuracy.yaml",
                  (f"algorithm={CENTRAL_OR_NONE}", *common))
        )  # fmt: skip
    for partition, knob in PARTITIONS.items():
        # DFedAvgM's momentum 0.9 at the common lr 0.05 diverges in some runs (momentum 0.9 makes
        # the steady step ten times lr): once more at lr 0.01, reported beside it.
        sweeps.append(
            Sweep("accuracy", f"accuracy-{partition}-dfedavgm-lr0.01", "accuracy.yaml",
                  ("topology=ring,erdos_renyi", f"partition={partition}", knob, f"seed={SEEDS3}"),
                  ("algorithm=dfedavgm", "lr=0.01"))
        )  # fmt: skip
    return sweeps


# Part 2: samples and classes per worker, where a shared body should pay for itself.
PAYS_ALGORITHMS = "deprl,local,dpsgd"
PAYS_SAMPLES = "10,25,50,100,200"
PAYS_CLASSES = "2,5,10"
# The paper's knobs, tried at one setting of part 2 where the body should matter most.
KNOBS_SETTING = ("classes_per_worker=5", "samples_per_worker=25")

WORKER_COUNTS = "4,8,16,32,64"
TOPOLOGIES = "ring,torus,exponential,erdos_renyi,complete"
# Part 5: one setting, DePRL, each ablation against the same base runs.
ABLATION_SETTING = ("algorithm=deprl", "partition=dirichlet", "alpha=0.5", "topology=erdos_renyi")


def _pays() -> list[Sweep]:
    return [
        Sweep("pays", "pays", "pays.yaml",
              (f"algorithm={PAYS_ALGORITHMS}", f"classes_per_worker={PAYS_CLASSES}",
               f"samples_per_worker={PAYS_SAMPLES}", "seed=0,1")),
        # 20 rounds favour Local, which trains its body 4 epochs a round to DePRL's 1: the same
        # question over 60 rounds, on the settings with few samples, curves every 5 rounds.
        Sweep("pays", "pays-long", "pays.yaml",
              (f"algorithm={PAYS_ALGORITHMS}", "classes_per_worker=5,10",
               "samples_per_worker=10,25,50,100", "seed=0,1"), ("rounds=60",)),
        Sweep("pays", "pays-knobs", "pays.yaml",
              ("head_epochs=1,3,5", "lr_body=0.02,0.05,0.1", "seed=0,1"),
              ("algorithm=deprl", *KNOBS_SETTING)),
        Sweep("pays", "pays-knobs-local", "pays.yaml",
              ("lr=0.02,0.05,0.1", "seed=0,1"), ("algorithm=local", *KNOBS_SETTING)),
    ]  # fmt: skip


# The theorem's quantity against N; a full-batch control (batch = all 100 samples: no gradient
# noise) shows which part of the floor is the stochastic term.
STATIONARITY_WORKERS = "4,8,16,32,64,128,256"


# The theorem's step size, eta proportional to sqrt(N/K) (K = 400 rounds fixed), anchored at the
# fixed-lr sweep's lr 0.02 for N = 4, beside that fixed lr; every round evaluated, since its
# quantity is the average over all rounds, the early ones included.
STEP_ANCHOR = (4, 0.02)


def theorem_lr(workers: int) -> float:
    """eta = c sqrt(N/K), with c so that the anchor's N gets the anchor's lr."""
    n, lr = STEP_ANCHOR
    return round(lr * math.sqrt(workers / n), 6)


def _steps() -> list[Sweep]:
    sweeps = []
    for n in map(int, STATIONARITY_WORKERS.split(",")):
        rates = ",".join(str(r) for r in sorted({STEP_ANCHOR[1], theorem_lr(n)}))
        sweeps.append(
            Sweep("speedup", f"stationarity-step-n{n}", "stationarity.yaml",
                  (f"lr={rates}", f"seed={SEEDS3}"),
                  ("topology=complete", f"workers={n}", "eval_every=1"))
        )  # fmt: skip
    return sweeps


def _speedup() -> list[Sweep]:
    return [
        *_steps(),
        Sweep("speedup", "stationarity", "stationarity.yaml",
              (f"workers={STATIONARITY_WORKERS}", "topology=complete,ring", f"seed={SEEDS3}")),
        Sweep("speedup", "stationarity-fullbatch", "stationarity.yaml",
              (f"workers={STATIONARITY_WORKERS}", f"seed={SEEDS3}"),
              ("topology=complete", "batch_size=100")),
        Sweep("speedup", "speedup-synthetic", "speedup-synthetic.yaml",
              (f"workers={WORKER_COUNTS}", "topology=ring,complete", f"seed={SEEDS5}")),
        Sweep("speedup", "speedup-fmnist", "speedup-fmnist.yaml",
              (f"workers={WORKER_COUNTS}", f"seed={SEEDS3}")),
    ]  # fmt: skip


def _topology() -> list[Sweep]:
    return [
        Sweep("topology", "topology", "accuracy.yaml",
              ("algorithm=deprl,dpsgd", f"topology={TOPOLOGIES}", f"seed={SEEDS3}"),
              ("partition=dirichlet", "alpha=0.5")),
    ]  # fmt: skip


def _ablations() -> list[Sweep]:
    seeds = f"seed={SEEDS3}"
    return [
        Sweep("ablations", "ablation-base", "accuracy.yaml", (seeds,), ABLATION_SETTING),
        Sweep("ablations", "ablation-body-one-step", "accuracy.yaml", (seeds,),
              (*ABLATION_SETTING, "body_epochs=none", "body_steps=1")),
        Sweep("ablations", "ablation-momentum", "accuracy.yaml",
              ("reset_momentum=false,true", seeds), (*ABLATION_SETTING, "momentum=0.9")),
        Sweep("ablations", "ablation-uniform-row", "accuracy.yaml", (seeds,),
              (*ABLATION_SETTING, "mixing=uniform_row")),
        Sweep("ablations", "ablation-gossip-first", "accuracy.yaml", (seeds,),
              (*ABLATION_SETTING, "gossip_first=true")),
    ]  # fmt: skip


# Part 6: the remainder batch and FedRoD's schedule, judged by the round-to-round spread.
LAST_BATCH_POLICIES = "last_batch=merge,drop,keep"
CLASSWISE = ("partition=dirichlet_classwise", "alpha=0.3")


def _noise() -> list[Sweep]:
    return [
        Sweep("noise", "noise-ditto", "noise.yaml",
              (LAST_BATCH_POLICIES, f"seed={SEEDS3}"), ("algorithm=ditto",)),
        Sweep("noise", "noise-fedrod", "noise.yaml",
              ("fedrod_schedule=interleaved,sequential", LAST_BATCH_POLICIES, f"seed={SEEDS3}"),
              ("algorithm=fedrod",)),
        # Hsu's class-wise Dirichlet split, where workers hold 68 to 304 samples (seed 0), so
        # remainders of 0 to 15: the setting where the peer's FedAvg and FedRoD were higher.
        Sweep("noise", "noise-classwise-fedavg", "noise.yaml",
              (LAST_BATCH_POLICIES, "seed=0,1"), ("algorithm=fedavg", *CLASSWISE)),
        Sweep("noise", "noise-classwise-fedrod", "noise.yaml",
              ("fedrod_schedule=interleaved,sequential", LAST_BATCH_POLICIES, "seed=0,1"),
              ("algorithm=fedrod", *CLASSWISE)),
    ]  # fmt: skip


def _hapt() -> list[Sweep]:
    return [Sweep("hapt", "hapt", "hapt.yaml", ("algorithm=deprl,local,dpsgd", f"seed={SEEDS3}"))]


# Part 7: the authors' recipe, every algorithm that runs on their graph, paired seed by seed.
PAPER_ALGORITHMS = "deprl,fedper,local,dpsgd,dfedavgm,ditto,fedrod,dispfl"


# One choice of the recipe changed at a time, for DePRL and for FedPer (which beat it under the
# recipe); each run is paired with paper-paired's run of the same algorithm and seed (partition,
# graph and initialisation). Adam runs at its usual lr 0.001.
KNOB_ALGORITHMS = "deprl,fedper"
PAPER_KNOBS: dict[str, tuple[str, ...]] = {
    "momentum-kept": ("reset_momentum=false",),
    "no-momentum": ("momentum=0",),
    "adam": ("optimizer=adam", "momentum=none", "lr=0.001"),
    "no-clipping": ("clip_norm=none",),
    "gossip-after": ("gossip_first=false",),
    "eval-average": ("eval_model=average",),
}


def _paper() -> list[Sweep]:
    paired = Sweep("paper", "paper-paired", "paper.yaml",
                   (f"algorithm={PAPER_ALGORITHMS}", f"seed={SEEDS3}"),
                   flags=("--paired-with", "algorithm=deprl"))  # fmt: skip
    knobs = [
        Sweep("paper", f"paper-knob-{name}", "paper.yaml",
              (f"algorithm={KNOB_ALGORITHMS}", f"seed={SEEDS3}"), sets)
        for name, sets in PAPER_KNOBS.items()
    ]  # fmt: skip
    return [paired, *knobs]


SWEEPS: list[Sweep] = [
    *_accuracy(), *_pays(), *_speedup(), *_topology(), *_ablations(), *_noise(), *_hapt(),
    *_paper(),
]  # fmt: skip
PARTS = tuple(dict.fromkeys(s.part for s in SWEEPS))
