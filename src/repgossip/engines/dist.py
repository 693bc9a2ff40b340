"""The distributed engine: torch.distributed (gloo on CPU, NCCL on GPU), launched by torchrun.

Each rank owns a contiguous block of workers. Gossip sends a worker's shared block only to the
ranks holding one of its graph neighbours (on a directed graph: out-neighbours, with its push-sum
weight as one more column), once per such rank, with point-to-point operations; neighbours on the
same rank read it from memory. Mixing uses the same exactly rounded slot order as the one-process
engine, so the numbers are the same however workers are spread.
"""

from __future__ import annotations

import datetime
import os
import time

import numpy as np
import torch
import torch.distributed as dist

from repgossip.engines.base import Engine, _float64_zeros
from repgossip.errors import DistributedError, UsageError, first_line
from repgossip.gossip import ALL_COLUMNS, Fetch, RoundPlan
from repgossip.metrics import add_in_order


class DistEngine(Engine):
    name = "dist"

    def __init__(self, workers: int, device: torch.device, timeout_s: float) -> None:
        super().__init__(workers)
        self.device = device
        if not dist.is_initialized():
            self._init_group(device, timeout_s)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if workers < self.world:
            raise UsageError(
                f"workers={workers} is fewer than the {self.world} ranks; use workers >= ranks"
            )
        self.blocks = np.array_split(np.arange(workers), self.world)
        self.owner = np.repeat(np.arange(self.world), [len(b) for b in self.blocks])

    @staticmethod
    def _init_group(device: torch.device, timeout_s: float) -> None:
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=timeout_s)
        if "RANK" not in os.environ:  # not under torchrun: a group of one, in this process
            dist.init_process_group(
                backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout
            )
            return
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        try:
            store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
            # After a torchrun restart the agent's store still holds the dead attempt's addresses;
            # a per-attempt prefix keeps the new group from dialling them.
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            store = dist.PrefixStore(f"repgossip/attempt-{attempt}", store)
            dist.init_process_group(
                backend, store=store, rank=rank, world_size=world, timeout=timeout
            )
        except Exception as err:
            raise DistributedError(f"cannot form the process group: {first_line(err)}") from None

    # ------------------------------------------------------------------ gossip

    def _peers(self, plan: RoundPlan) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """For each other rank q: (my workers whose rows q's workers mix, q's workers whose rows
        mine mix). Both lists come from the global slots, which every rank holds, so my send list
        for q is exactly q's receive list for me without asking each other; that needs no
        symmetry, so it holds for a directed graph's P (where q may need rows from me while I
        need none from q)."""
        mine = self.local_workers()
        needed_by_me = plan.slots.neighbours(mine)
        peers = {}
        for q in range(self.world):
            if q == self.rank:
                continue
            recv = needed_by_me[self.owner[needed_by_me] == q]
            send = np.intersect1d(plan.slots.neighbours(self.blocks[q]), mine)
            if len(recv) or len(send):
                peers[q] = (send, recv)
        return peers

    def fetch_neighbours(self, block: torch.Tensor, plan: RoundPlan) -> Fetch:
        before = block.clone()
        mine = self.local_workers()
        position = np.full(self.workers, -1)
        position[mine] = np.arange(len(mine))
        ops, received = [], []
        offset = len(mine)
        for q, (send, recv) in self._peers(plan).items():
            if len(send):
                payload = before[torch.from_numpy(send - mine[0])].contiguous()
                ops.append(dist.P2POp(dist.isend, payload, q))
                self.wire_bytes += payload.numel() * payload.element_size()
            if len(recv):
                buffer = torch.empty(
                    (len(recv), before.shape[1]), dtype=before.dtype, device=before.device
                )
                ops.append(dist.P2POp(dist.irecv, buffer, q))
                received.append(buffer)
                position[recv] = np.arange(offset, offset + len(recv))
                offset += len(recv)
        self._wait(ops, "gossip")
        pool = torch.cat([before, *received]) if received else before
        return lambda ids, cols=ALL_COLUMNS: pool[torch.from_numpy(position[ids]), cols]

    def _wait(self, ops: list, what: str) -> None:
        if not ops:
            return
        began = time.perf_counter()
        try:
            for request in dist.batch_isend_irecv(ops):
                request.wait()
        except Exception as err:
            raise DistributedError(f"rank {self.rank}: {what} failed: {first_line(err)}") from None
        self.comm_s += time.perf_counter() - began

    # ------------------------------------------------------------------ collectives

    def _collective(self, fn, *args, what: str, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            raise DistributedError(f"rank {self.rank}: {what} failed: {first_line(err)}") from None

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.to(self.device, copy=True)  # NCCL reduces on the GPU only
        self._collective(dist.all_reduce, out, op=dist.ReduceOp.SUM, what="all-reduce")
        return out.to(tensor.device)

    def all_min(self, value: int) -> int:
        out = torch.tensor([value], dtype=torch.int64, device=self.device)
        self._collective(dist.all_reduce, out, op=dist.ReduceOp.MIN, what="all-reduce")
        return int(out.item())

    def broadcast_bytes(self, payload: bytes) -> bytes:
        size = torch.tensor([len(payload)], dtype=torch.int64, device=self.device)
        self._collective(dist.broadcast, size, src=0, what="broadcast")
        data = torch.zeros(int(size.item()), dtype=torch.uint8, device=self.device)
        if self.is_writer:
            data.copy_(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
        self._collective(dist.broadcast, data, src=0, what="broadcast")
        return bytes(data.cpu().numpy().tobytes())

    def ordered_sum(self, rows: torch.Tensor) -> torch.Tensor:
        """Ranks hold consecutive blocks of workers, so the running sum passes from rank to
        rank, each adding its workers in order, and the last rank's total goes to every rank."""
        total = _float64_zeros(rows)
        if self.rank > 0:
            self._wait([dist.P2POp(dist.irecv, total, self.rank - 1)], "ordered sum")
        add_in_order(total, rows)
        if self.rank < self.world - 1:
            self._wait([dist.P2POp(dist.isend, total, self.rank + 1)], "ordered sum")
        self._collective(dist.broadcast, total, src=self.world - 1, what="broadcast")
        return total

    def gather_rows(self, rows: torch.Tensor) -> torch.Tensor | None:
        if not self.is_writer:
            self._wait([dist.P2POp(dist.isend, rows.contiguous(), 0)], "checkpoint gather")
            return None
        parts = [rows.contiguous()]
        ops = []
        for q in range(1, self.world):
            parts.append(torch.empty((len(self.blocks[q]), *rows.shape[1:]), dtype=rows.dtype,
                                     device=rows.device))  # fmt: skip
            ops.append(dist.P2POp(dist.irecv, parts[-1], q))
        self._wait(ops, "checkpoint gather")
        return torch.cat(parts)

    def scatter_rows(self, full: torch.Tensor | None, local: torch.Tensor) -> None:
        if not self.is_writer:
            buffer = torch.empty_like(local)
            self._wait([dist.P2POp(dist.irecv, buffer, 0)], "checkpoint scatter")
            local.copy_(buffer)
            return
        assert full is not None
        ops = [dist.P2POp(dist.isend, full[torch.from_numpy(self.blocks[q])].to(local.device), q)
               for q in range(1, self.world)]  # fmt: skip
        self._wait(ops, "checkpoint scatter")
        local.copy_(full[torch.from_numpy(self.blocks[0])])

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
