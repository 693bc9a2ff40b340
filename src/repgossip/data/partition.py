"""Split a centralized labelled dataset over workers, and give each worker a matching test split.

`dirichlet`, `shards` and `iid` give all workers the same number of samples, so that per-worker
accuracies are comparable and no worker dominates a gossip average. `dirichlet_classwise` is the
scheme of the literature (Hsu et al. 2019, as DisPFL and PFLlib split data): each class is divided
among workers by Dir(alpha) proportions, so worker sizes differ too. `natural` stands for the
datasets whose samples belong to users (one worker per user) and for data handed over one split per
worker; those come split already, and here it is only refused for the others. Returned index
arrays are int64 and SORTED ascending: the order carries no information (each worker shuffles its
own batches from its own random stream), and sorted output makes results easy to compare and hash.

Schemes are registered in PARTITIONS by name; a scheme is a function
`(labels, workers, n, rng, **params) -> list of index arrays` that declares its own parameters
(`alpha`, `classes_per_worker`: repgossip.params), which are config keys when it is selected.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from repgossip.errors import UsageError
from repgossip.params import Param, defaults, with_params
from repgossip.registry import Registry

ALPHA = Param("alpha", 0.5, "Dirichlet concentration (smaller: more skewed)", low=0, low_open=True)
CLASSES_PER_WORKER = Param("classes_per_worker", 2, "distinct classes per worker", low=1)


def partition(
    labels: np.ndarray,
    workers: int,
    scheme: str,
    *,
    samples_per_worker: int | None = None,
    seed: int = 0,
    **params: Any,
) -> list[np.ndarray]:
    """Indices into `labels` for each worker: sorted int64 arrays, of equal length n (at most
    `samples_per_worker`) except under dirichlet_classwise, whose sizes average n. `params` are
    the scheme's own (`alpha=0.1`); one left out takes its declared default.

    No index is used twice, no worker is empty, and the result is a pure function of the arguments
    (the seed fixes all randomness), so a run can be reproduced and resumed.
    """
    labels = _check_labels(labels)
    split = PARTITIONS.get(scheme)
    if scheme == NATURAL:
        raise _no_users()
    declared = defaults(split)
    unknown = next((k for k in params if k not in declared), None)
    if unknown is not None:
        takes = ", ".join(declared) or "nothing"
        raise UsageError(f"partition '{scheme}' takes no {unknown}; it takes: {takes}")
    n = _equal_size(len(labels), workers, samples_per_worker)
    rng = np.random.default_rng(seed)
    return split(labels, workers, n, rng, **{**declared, **params})


def _iid(
    labels: np.ndarray, workers: int, n: int, rng: np.random.Generator, **_: Any
) -> list[np.ndarray]:
    """Equal chunks of one random permutation: every worker sees the global label distribution."""
    perm = rng.permutation(len(labels)).astype(np.int64)
    return [np.sort(perm[i * n : (i + 1) * n]) for i in range(workers)]


def _dirichlet(
    labels: np.ndarray, workers: int, n: int, rng: np.random.Generator, *, alpha: float, **_: Any
) -> list[np.ndarray]:
    """Each worker's class proportions ~ Dir(alpha), n samples each (equal sizes)."""
    _check_alpha(alpha, "dirichlet")
    classes, inverse = np.unique(labels, return_inverse=True)
    pools = _class_pools(inverse, len(classes), rng)
    counts = _dirichlet_counts(np.array([len(p) for p in pools]), workers, n, alpha, rng)
    return _take_from_pools(pools, counts)


def _shards(
    labels: np.ndarray,
    workers: int,
    n: int,
    rng: np.random.Generator,
    *,
    classes_per_worker: int,
    **_: Any,
) -> list[np.ndarray]:
    """`classes_per_worker` distinct classes per worker, equal shares."""
    classes, inverse = np.unique(labels, return_inverse=True)
    pools = _class_pools(inverse, len(classes), rng)
    counts = _shard_counts(pools, workers, n, classes_per_worker, classes, rng)
    return _take_from_pools(pools, counts)


def _dirichlet_classwise(
    labels: np.ndarray, workers: int, n: int, rng: np.random.Generator, *, alpha: float, **_: Any
) -> list[np.ndarray]:
    """Each class divided among workers by Dir(alpha) proportions (Hsu et al. 2019); sizes vary."""
    _check_alpha(alpha, "dirichlet_classwise")
    pool = _classwise_pool(len(labels), workers, n, rng)
    classes, inverse = np.unique(labels[pool], return_inverse=True)
    pools = [pool[p] for p in _class_pools(inverse, len(classes), rng)]
    least = min(CLASSWISE_LEAST, max(1, len(pool) // (2 * workers)))
    for _attempt in range(CLASSWISE_TRIES):
        parts = _classwise_draw(pools, workers, alpha, rng)
        if min(len(p) for p in parts) >= least:
            return [np.sort(p).astype(np.int64) for p in parts]
    raise UsageError(
        f"dirichlet_classwise: alpha={alpha} left some worker with fewer than {least} samples in "
        f"{CLASSWISE_TRIES} seeded draws; use a larger alpha, fewer workers, or partition=dirichlet"
    )


def _natural(labels: np.ndarray, workers: int, n: int, rng: np.random.Generator, **_: Any) -> list:
    """One worker per user, each tested on its own later samples (datasets with users: hapt)."""
    raise _no_users()


def _no_users() -> UsageError:
    others = ", ".join(name for name in PARTITIONS if name != NATURAL)
    return UsageError(
        f"partition '{NATURAL}' needs a dataset whose samples belong to users ({', '.join(USER_DATASETS)}) "
        f"or data given one split per worker; for this dataset use one of: {others}"
    )


NATURAL = "natural"
USER_DATASETS = ("hapt",)  # datasets that build the natural partition themselves
CLASSWISE_LEAST = 10  # "every worker gets at least a few samples" (FedML and DisPFL use 10)
CLASSWISE_TRIES = 100  # seeded redraws before giving up: bounded, never an endless rejection loop

PartitionScheme = Callable[..., list[np.ndarray]]
PARTITIONS: Registry[PartitionScheme] = Registry("partition")
for _name, _scheme in (
    ("dirichlet", with_params(_dirichlet, ALPHA)),
    ("shards", with_params(_shards, CLASSES_PER_WORKER)),
    ("iid", with_params(_iid)),
    ("dirichlet_classwise", with_params(_dirichlet_classwise, ALPHA)),
    (NATURAL, with_params(_natural)),
):
    PARTITIONS.register(_name, _scheme)
EQUAL_SIZE = ("dirichlet", "shards", "iid")  # the schemes that give every worker n samples


def _check_alpha(alpha: float, scheme: str) -> None:
    if not (np.isfinite(alpha) and alpha > 0):
        raise UsageError(
            f"alpha must be a finite number > 0 for the {scheme} partition, got {alpha}"
        )


def _classwise_pool(total: int, workers: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """The samples dirichlet_classwise divides: all of them, or a random workers * n of them when
    samples_per_worker caps n below an even share (so sizes average n, as for the other schemes)."""
    if n == total // workers:
        return np.arange(total, dtype=np.int64)
    return np.sort(rng.permutation(total)[: workers * n]).astype(np.int64)


def _classwise_draw(
    pools: list, workers: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """One draw of Hsu et al.'s split, with the balance rule of the public implementations (FedML,
    PFLlib): a worker already holding an even share of all samples takes no more of later classes.
    """
    mean = sum(len(p) for p in pools) / workers
    sizes = np.zeros(workers, dtype=np.int64)
    chunks: list[list[np.ndarray]] = [[] for _ in range(workers)]
    for pool in pools:
        q = rng.dirichlet(np.full(workers, alpha)) * (sizes < mean)
        if not q.sum() > 0:  # the draw's mass fell on full workers only (tiny alpha)
            q = np.zeros(workers)
            q[rng.choice(np.flatnonzero(sizes < mean))] = 1.0
        cuts = (np.cumsum(q / q.sum()) * len(pool)).astype(np.int64)[:-1]
        for i, chunk in enumerate(np.split(pool, cuts)):
            chunks[i].append(chunk)
            sizes[i] += len(chunk)
    return [np.concatenate(c) for c in chunks]


def _check_labels(labels: np.ndarray) -> np.ndarray:
    """Labels must be a 1-D array; anything else is almost surely a caller mix-up (e.g. images)."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise UsageError(f"labels must be a 1-D array, got shape {arr.shape}")
    return arr


def _equal_size(total: int, workers: int, samples_per_worker: int | None) -> int:
    """Per-worker sample count: floor(total / workers), capped by samples_per_worker."""
    if not isinstance(workers, (int, np.integer)) or workers < 1:
        raise UsageError(f"workers must be an integer >= 1, got {workers!r}")
    if workers > total:
        raise UsageError(f"workers={workers} is more than the {total} samples; use <= {total}")
    n = total // workers
    if samples_per_worker is not None:
        if samples_per_worker < 1:
            raise UsageError(f"samples_per_worker must be >= 1 or unset, got {samples_per_worker}")
        n = min(n, int(samples_per_worker))
    return n


def _class_pools(inverse: np.ndarray, num_classes: int, rng: np.random.Generator) -> list:
    """Shuffled sample indices of each class; workers take consecutive chunks, so no reuse."""
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=num_classes))[:-1]
    return [rng.permutation(chunk).astype(np.int64) for chunk in np.split(order, bounds)]


def _dirichlet_counts(
    capacity: np.ndarray, workers: int, n: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    """(workers, C) class counts: each row sums to n, each column fits its class's capacity.

    An exact sampler without rejection: workers are visited in a random order (so no worker is
    systematically left with the leftovers), and each one's Dirichlet draw is restricted to the
    classes that still have samples.
    """
    counts = np.zeros((workers, len(capacity)), dtype=np.int64)
    remaining = capacity.astype(np.int64).copy()
    for i in rng.permutation(workers):
        q = rng.dirichlet(np.full(len(capacity), alpha))
        counts[i] = _fill_worker(q, remaining, n, rng)
        remaining -= counts[i]
    return counts


def _fill_worker(
    q: np.ndarray, remaining: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """Draw n samples over classes from proportions q, never exceeding `remaining`.

    Each pass either places everything or exhausts at least one class, so it ends in <= C passes.
    """
    alloc = np.zeros_like(remaining)
    need = n
    while need > 0:
        room = remaining - alloc
        open_ = room > 0
        weights = np.where(open_, q, 0.0)
        if not np.isfinite(weights.sum()) or weights.sum() <= 1e-300:
            weights = room.astype(np.float64)  # q has ~no mass left: follow what is available
        draw = rng.multinomial(need, weights / weights.sum())
        take = np.minimum(draw, room)
        alloc += take
        need -= int(take.sum())
    return alloc


def _shard_counts(
    pools: list,
    workers: int,
    n: int,
    k: int,
    classes: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """(workers, C) counts: worker i holds k distinct classes, each with the same share.

    Classes are dealt round-robin over a random permutation, so every class is used by either
    floor or ceil of workers*k/C workers, and the share is the largest one all classes can afford.
    """
    num = len(pools)
    if not isinstance(k, (int, np.integer)) or k < 1 or k > num:
        raise UsageError(
            f"classes_per_worker must be between 1 and the {num} classes present, got {k!r}"
        )
    perm = rng.permutation(num)
    assign = perm[(np.arange(workers)[:, None] * k + np.arange(k)[None, :]) % num]
    holders = np.bincount(assign.ravel(), minlength=num)
    used = np.flatnonzero(holders)
    afford = np.array([len(pools[c]) for c in used]) // holders[used]
    share = min(n // k, int(afford.min()))
    if share < 1:
        worst = used[int(afford.argmin())]
        raise UsageError(
            f"shards: class {classes[worst].item()!r} has {len(pools[worst])} samples for "
            f"{holders[worst]} workers (and {n} samples per worker for {k} classes), leaving "
            "workers empty; use fewer workers or a smaller classes_per_worker"
        )
    counts = np.zeros((workers, num), dtype=np.int64)
    np.put_along_axis(counts, assign, share, axis=1)
    return counts


def _take_from_pools(pools: list, counts: np.ndarray) -> list[np.ndarray]:
    """Hand out consecutive chunks of each class pool, so no index is used twice."""
    starts = np.vstack([np.zeros(counts.shape[1], np.int64), np.cumsum(counts, axis=0)])
    out = []
    for i in range(counts.shape[0]):
        parts = [pools[c][starts[i, c] : starts[i + 1, c]] for c in np.flatnonzero(counts[i])]
        out.append(np.sort(np.concatenate(parts)).astype(np.int64))
    return out


def test_split(
    train_labels: list[np.ndarray], test_labels: np.ndarray, ratio: float, seed: int = 0
) -> list[np.ndarray]:
    """Each worker's test indices (sorted int64) into the global test set.

    A worker is evaluated on the label mix it trains on (personalized accuracy is meaningless
    otherwise): for class c with n_ic train samples it gets round-half-up(ratio * n_ic) test
    samples of c, capped at the number of test samples of c, and at least 1 sample in total.
    Per class, workers take consecutive chunks of one shuffled pool in turn, so test sets are
    disjoint whenever the pool is large enough; only when it is not does it wrap around, re-using
    samples across workers but never within one worker.
    """
    if not (np.isfinite(ratio) and ratio > 0):
        raise UsageError(f"test ratio must be a finite number > 0, got {ratio}")
    test_labels = _check_labels(test_labels)
    rng = np.random.default_rng(seed)
    classes, inverse = np.unique(test_labels, return_inverse=True)
    pools = _class_pools(inverse, len(classes), rng)
    sizes = np.array([len(p) for p in pools], dtype=np.int64)
    demand = np.stack(
        [_test_demand(y, classes, sizes, ratio, i) for i, y in enumerate(train_labels)]
    )
    return _deal_wrapping(pools, demand)


test_split.__test__ = False  # type: ignore[attr-defined]  # a library function, not a pytest test, wherever it is imported


def _test_demand(
    train_y: np.ndarray, classes: np.ndarray, sizes: np.ndarray, ratio: float, worker: int
) -> np.ndarray:
    """Per-class test counts for one worker, following its train label counts."""
    train_y = np.asarray(train_y)
    n_ic = np.array([np.count_nonzero(train_y == c) for c in classes], dtype=np.int64)
    want = np.minimum(np.floor(ratio * n_ic + 0.5).astype(np.int64), sizes)
    if want.sum() == 0:
        avail = np.where(sizes > 0, n_ic, 0)
        if avail.max(initial=0) == 0:
            raise UsageError(
                f"worker {worker}: none of its train classes {np.unique(train_y).tolist()} "
                f"appear in the test set (classes {classes.tolist()})"
            )
        want[int(avail.argmax())] = 1  # its most frequent class that the test set has
    return want


def _deal_wrapping(pools: list, demand: np.ndarray) -> list[np.ndarray]:
    """Workers take consecutive chunks of each pool in turn, wrapping modulo the pool size."""
    pos = np.zeros(len(pools), dtype=np.int64)
    out = []
    for row in demand:
        parts = []
        for c in np.flatnonzero(row):
            size = len(pools[c])
            parts.append(pools[c][(pos[c] + np.arange(row[c])) % size])
            pos[c] = (pos[c] + row[c]) % size
        out.append(np.sort(np.concatenate(parts)).astype(np.int64))
    return out
