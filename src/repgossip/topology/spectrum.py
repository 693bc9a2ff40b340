"""The spectral gap 1 - |lambda_2(W)| of a mixing matrix: closed forms for the symmetric
topologies built here, a dense eigendecomposition up to DENSE_SPECTRUM_LIMIT workers, Lanczos
beyond it (on a symmetric similar form where W is reversible)."""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

from repgossip.topology.mixing import Mixing, mixing_matrix

# Up to this size the spectral gap comes from a dense eigendecomposition (exact, well under a
# second); beyond it a dense N x N matrix costs seconds to minutes and N^2 memory, so the gap comes
# from the graph's symmetry (the topologies built here) or from a sparse Lanczos solver.
DENSE_SPECTRUM_LIMIT = 2048
# Lanczos budget for the gap of other graphs beyond that size: about two seconds at 10,000 nodes.
# Well-connected graphs (erdos_renyi, star) converge in a fraction of it; a long path (gap ~1e-7)
# does not, and its gap is reported as unknown rather than waiting minutes.
_LANCZOS_VECTORS = 64
_LANCZOS_RESTARTS = 100


def spectral_gap(mixing: Mixing) -> float | None:
    """1 - second-largest eigenvalue modulus of W: the per-round contraction of the distance to
    consensus. 0 for a disconnected graph, 1 for exact averaging and for N = 1.

    Exact from the graph's symmetry where it has one, by a dense eigendecomposition up to
    DENSE_SPECTRUM_LIMIT workers, else by Lanczos on W or, for a W that is not symmetric but
    reversible (`uniform_row`), on the symmetric matrix similar to it (`_symmetric_form`); None
    where Lanczos does not converge or no such form exists. Directed graphs: `_directed_gap`.
    """
    graph = mixing.graph
    if graph.workers <= 1:
        return 1.0
    if graph.directed:
        return _directed_gap(mixing)
    if graph.cayley is not None and _is_uniform_on_regular(mixing, graph.cayley.degree):
        # A d-regular graph under every built-in rule has W = (I + A) / (1 + d).
        eigenvalues = (1.0 + graph.cayley.adjacency_eigenvalues()) / (1.0 + graph.cayley.degree)
        slem = float(np.abs(eigenvalues[1:]).max())
    elif graph.workers <= DENSE_SPECTRUM_LIMIT:
        dense = mixing.dense()
        moduli = np.abs(np.linalg.eigvalsh(dense) if mixing.symmetric else np.linalg.eigvals(dense))
        slem = float(np.sort(moduli)[-2])
    else:
        form = _symmetric_form(mixing)
        largest = None if form is None else _deflated_largest_modulus(*form)
        if largest is None:
            return None
        slem = largest
    return _gap(slem)


def _is_uniform_on_regular(mixing: Mixing, degree: int) -> bool:
    """Whether every weight of W is 1/(1 + degree): the closed form of the symmetric graphs holds
    for the built-in rules, not necessarily for a rule registered by a user."""
    share = 1.0 / (1.0 + degree)
    weights = [mixing.edge_weights, mixing.self_weights]
    weights += [] if mixing.back_weights is None else [mixing.back_weights]
    # relative: W_ii = 1 - d/(1 + d) is off 1/(1 + d) by rounding (4e-14 on complete graphs of
    # a few thousand), which must not turn off the exact form
    return all(np.allclose(w, share, rtol=1e-9, atol=0.0) for w in weights)


_ROUND_OFF = 1e-12  # moduli below this are an exact zero (exact averaging) blurred by float


def _gap(slem: float, rounds: int = 1) -> float:
    """1 - the per-round rate of a second-largest eigenvalue modulus over `rounds` rounds, in
    [0, 1]; exact averaging (a modulus at rounding level) reports exactly 1."""
    rate = 0.0 if slem < _ROUND_OFF else slem ** (1.0 / rounds)
    return float(min(1.0, max(0.0, 1.0 - rate)))


def _directed_gap(mixing: Mixing) -> float | None:
    """1 - |lambda_2| of push-sum's P (not symmetric: its eigenvalues are complex), the
    asymptotic per-round rate at which the de-biased values z_i = x_i / w_i approach consensus.
    For a time-varying graph, 1 - |lambda_2(P_{T-1} ... P_0)|^(1/T): the same per-round rate,
    averaged over a period of T rounds (1 where a period averages exactly).

    Exact by Fourier transform for the directed circulant topologies (every period's matrices
    share one eigenbasis) at any size, by a dense eigendecomposition up to DENSE_SPECTRUM_LIMIT
    workers, None beyond (no sparse solver is used for non-symmetric P).
    """
    graphs = mixing.graph.cycle or (mixing.graph,)
    if all(g.cayley is not None for g in graphs):
        product = np.ones(mixing.graph.workers, dtype=np.complex128)
        for g in graphs:
            assert g.cayley is not None
            product *= (1.0 + g.cayley.spectrum()) / (1.0 + g.cayley.degree)
        slem = float(np.abs(product[1:]).max())
    elif mixing.graph.workers <= DENSE_SPECTRUM_LIMIT:
        dense = np.eye(mixing.graph.workers)
        for g in graphs:
            dense = mixing_matrix(g).sparse() @ dense
        slem = float(np.sort(np.abs(np.linalg.eigvals(dense)))[-2])
    else:
        return None
    return _gap(slem, rounds=len(graphs))


_REVERSIBLE_TOLERANCE = 1e-9


def _symmetric_form(mixing: Mixing) -> tuple[sp.csr_array, np.ndarray] | None:
    """A symmetric S with W's eigenvalues and S's unit eigenvector u for eigenvalue 1, or None.

    A symmetric W is its own form, u = 1/sqrt(N). A row-stochastic W that is reversible, pi_i W_ij
    = pi_j W_ji with pi_i = 1 / W_ii (uniform_row: W_ij = 1/(1 + d_i), so pi_i = 1 + d_i), is
    similar to S = Pi^(1/2) W Pi^(-1/2), which is symmetric, with u proportional to sqrt(pi).
    That puts the Lanczos solver within reach of the authors' weights beyond the dense limit.
    """
    w, n = mixing.sparse(), mixing.graph.workers
    if mixing.symmetric:
        return w, np.full(n, 1.0 / math.sqrt(n))
    if np.any(mixing.self_weights <= 0):
        return None
    root = np.sqrt(1.0 / mixing.self_weights)  # sqrt(pi)
    form = sp.csr_array(sp.diags_array(root) @ w @ sp.diags_array(1.0 / root))
    # W_ii is 1 minus the row's other weights, so pi carries their rounding: a star's hub of
    # 10,000 leaves leaves an asymmetry of 7e-12. A W that is not reversible differs by the order
    # of its weights, so a tolerance far above rounding and far below any weight tells them apart.
    if abs(form - form.T).max() > _REVERSIBLE_TOLERANCE:
        return None
    return sp.csr_array((form + form.T) / 2), root / np.linalg.norm(root)


def _deflated_largest_modulus(form: sp.csr_array, top: np.ndarray) -> float | None:
    """Largest |eigenvalue| of the symmetric `form` without its eigenvector `top` (eigenvalue 1,
    consensus), by Lanczos."""
    n = form.shape[0]
    top = top[:, None]

    def apply(x: np.ndarray) -> np.ndarray:
        columns = x.reshape(n, -1)
        return (form @ columns - top @ (top.T @ columns)).reshape(x.shape)

    operator = LinearOperator((n, n), matvec=apply, matmat=apply, dtype=np.float64)
    try:
        values = eigsh(
            operator,
            k=1,
            which="LM",
            tol=1e-10,
            ncv=min(n - 1, _LANCZOS_VECTORS),
            maxiter=_LANCZOS_RESTARTS,
            return_eigenvectors=False,
        )
    except ArpackNoConvergence:
        return None
    return float(np.abs(values).max())
