"""Connected components of a graph given as edge lists, vectorised (used by the PRO metric's
region labelling and by the largest-component preprocessing step)."""

from __future__ import annotations

import numpy as np


def connected_components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Root of each of ``n`` nodes joined by edges ``a[i] - b[i]``: the smallest node index of its
    component.

    Vectorised union-find: hook every root to the smallest root it shares an edge with, then
    compress paths fully. Every tree with an unresolved edge merges each round, so the number of
    trees along any chain at least halves: O(log n) rounds even for spirals and snakes. Hooking
    only to smaller indices cannot create cycles and keeps each root the component's minimum.
    """
    parent = np.arange(n)
    a, b = np.asarray(a), np.asarray(b)
    while a.size:
        ra, rb = parent[a], parent[b]
        open_edges = ra != rb
        if not open_edges.any():
            break
        # An edge inside one tree stays inside it, so it never needs to be looked at again.
        a, b, ra, rb = a[open_edges], b[open_edges], ra[open_edges], rb[open_edges]
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    return parent
