"""The straightforward simulator that `repgossip bench --reference` measures against.

It is built the way the DePRL authors' code (and DisPFL's, PFLlib's) is: one `nn.Module`, one
`torch.optim.SGD` and one `DataLoader` per worker; a round is nested Python loops (for each worker:
the head epochs, then the body epochs, a full forward pass at every step, frozen parts switched off
with `requires_grad`); gossip averages `state_dict`s.

It lives in the package (not in `benchmarks/`) so that the installed `repgossip bench` can import
it. It does the same work as `Population` on the same config: the same initialisation, data, batch
order (each DataLoader draws its batches from the worker's own schedule), learning rates, momentum
policy, and mixing weights, so its parameters equal Population's to float rounding
(tests/test_bench.py checks this). Only the speed differs.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from repgossip.experiment import Experiment
from repgossip.streams import worker_generator
from repgossip.training import batch_schedule, budget, step_rule


class ReferenceWorker:
    """One worker as the authors hold it: a module, an optimizer, a dataset."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, regression: bool):
        self.model = copy.deepcopy(model)
        self.dataset = TensorDataset(x, y)
        self.loss = nn.MSELoss() if regression else nn.CrossEntropyLoss()
        # One optimizer over every parameter: frozen ones get no gradient and are skipped, so the
        # momentum of each parameter persists across phases (and rounds, unless reset_momentum).
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1.0)

    def train(self, part: str, batches: list[torch.Tensor], lr: float, momentum: float,
              weight_decay: float) -> None:  # fmt: skip
        """SGD on `part` ("head", "body" or "all") over `batches`, the rest frozen."""
        for name, param in self.model.named_parameters():
            param.requires_grad_(part == "all" or name.startswith(part + "."))
        group = self.optimizer.param_groups[0]
        group.update(lr=lr, momentum=momentum, weight_decay=weight_decay)
        loader = DataLoader(self.dataset, batch_sampler=[b.tolist() for b in batches])
        for x, y in loader:
            self.optimizer.zero_grad(set_to_none=True)
            self.loss(self.model(x), y).backward()
            self.optimizer.step()


class ReferenceSimulation:
    """Every worker of `exp`'s config, trained and gossiped the straightforward way."""

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp
        fed, model = exp.federation, exp.population.model
        self.workers = [
            ReferenceWorker(model, x, y, fed.regression)
            for x, y in zip(fed.train_x, fed.train_y, strict=True)
        ]

    def train_round(self, round_index: int) -> None:
        """Local phases worker by worker, then gossip of the shared part by state_dicts."""
        cfg, plan = self.exp.cfg, self.exp.schedule.round_plan(round_index)
        for worker_id, worker in enumerate(self.workers):
            if cfg.reset_momentum:  # a new optimizer each round, as the DePRL authors build one
                worker.optimizer.state.clear()
            if not plan.active[worker_id]:
                continue
            for phase_index, phase in enumerate(self.exp.algorithm.phases):
                gen = worker_generator(cfg.seed, worker_id, round_index, phase_index)
                batches = batch_schedule(
                    len(worker.dataset),
                    cfg.batch_size,
                    budget(cfg, phase.budget),
                    gen,
                    cfg.last_batch,
                    self.exp.population.has_batch_norm,
                ).batches()
                rule = step_rule(cfg, phase.part, round_index)
                worker.train(phase.part, batches, rule.lr, rule.momentum, rule.weight_decay)
        if self.exp.algorithm.shared is not None:
            self.gossip(self.exp.algorithm.shared, plan.mixing.dense())

    def gossip(self, part: str, weights) -> None:
        """x_i <- sum_j W_ij x_j for every tensor of the shared part, ascending j."""
        states = [w.model.state_dict() for w in self.workers]
        keys = [k for k in states[0] if part == "all" or k.startswith(part + ".")]
        mixed = []
        for i in range(len(self.workers)):
            new = {}
            for key in keys:
                terms = [states[j][key] * float(weights[i, j])
                         for j in range(len(self.workers)) if weights[i, j] != 0]  # fmt: skip
                total = terms[0].clone()
                for term in terms[1:]:
                    total.add_(term)
                new[key] = total
            mixed.append(new)
        for worker, new in zip(self.workers, mixed, strict=True):
            worker.model.load_state_dict(new, strict=False)

    def flat_params(self) -> torch.Tensor:
        """(workers, P): every worker's parameters in Population's layout, for comparison."""
        return torch.stack(
            [
                torch.cat([p.detach().reshape(-1) for p in w.model.parameters()])
                for w in self.workers
            ]
        )
