"""Token ids of ODEFormer's inputs (the float tokens of every time point) and outputs (the prefix
tokens of a system), and batching of both.

Source: ODEFormer (arXiv 2310.05573), §3 "Tokenization"; reference ``envs/environment.py``
(``float_id2word`` for the encoder, ``equation_id2word`` for the decoder) and
``model/embedders.py`` (a point is (t, x_1..x_D) padded with ``<OUTPUT_PAD>`` to D_max).

* Input vocabulary: ``codec.FLOAT_TOKENS`` then ``<pad>`` (:data:`INPUT_PAD_ID`).
* Output vocabulary: ``expr.vocabulary(max_dimension)`` (``<pad>``, ``<bos>``, ``<eos>``, ``|``,
  operators, variables, ``t``, float tokens).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from formers.sciml.ode import codec, expr

INPUT_VOCAB: list[str] = list(codec.FLOAT_TOKENS) + ["<pad>"]
INPUT_PAD_ID = len(codec.FLOAT_TOKENS)
PAD, BOS, EOS = (expr.vocabulary(1).index(s) for s in expr.SPECIAL_TOKENS)


def output_vocab_size(max_dimension: int) -> int:
    """Size of the output vocabulary for systems of up to ``max_dimension`` components."""
    return len(expr.vocabulary(max_dimension))


def encode_points(t: np.ndarray, x: np.ndarray, max_dimension: int) -> np.ndarray:
    """One row of input ids per time point: ``t (n,)``, ``x (n, dim)`` -> ``(n, (1 + max_dimension) * 3)``
    int64: the codec ids of t, x_1 .. x_dim, then :data:`INPUT_PAD_ID` up to ``max_dimension``.

    Raises ValueError when shapes disagree or ``dim > max_dimension``. NaN values become the
    codec's three ``NaN`` tokens (the reference does the same)."""
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != t.shape[0]:
        raise ValueError(f"t must be (n,) and x (n, dim) with the same n, got {t.shape} and {x.shape}")
    if x.shape[1] > max_dimension:
        raise ValueError(f"the trajectory has {x.shape[1]} state components; the model reads at most "
                         f"max_dimension = {max_dimension}")
    ids = codec.encode_floats(np.concatenate([t[:, None], x], axis=1)).reshape(t.shape[0], -1)
    pad = np.full((t.shape[0], 3 * (max_dimension - x.shape[1])), INPUT_PAD_ID, dtype=np.int64)
    return np.concatenate([ids, pad], axis=1)


def encode_system(system: Sequence[expr.Node], max_dimension: int) -> list[int]:
    """``[<bos>] + ids of to_prefix(system) + [<eos>]`` in the output vocabulary.

    Raises ValueError for a system with more components or variables than ``max_dimension``."""
    vocab = _index(max_dimension)
    if len(system) > max_dimension or (expr.variables(system) and max(expr.variables(system)) >= max_dimension):
        raise ValueError(f"system of {len(system)} components (variables {sorted(expr.variables(system))}) "
                         f"exceeds max_dimension = {max_dimension}")
    return [BOS] + [vocab[tok] for tok in expr.to_prefix(system)] + [EOS]


def decode_system(ids: Sequence[int], max_dimension: int, dim: int | None = None) -> tuple[expr.Node, ...]:
    """The system of output ids (BOS/EOS/PAD dropped); ValueError when they do not parse or, with
    ``dim``, when the number of components differs from it."""
    words = expr.vocabulary(max_dimension)
    toks = [words[i] for i in ids if i not in (PAD, BOS, EOS)]
    system = expr.from_prefix(toks, max_dim=max_dimension)
    if dim is not None and len(system) != dim:
        raise ValueError(f"decoded {len(system)} components, the trajectory has {dim}")
    return system


_INDEX: dict[int, dict[str, int]] = {}


def _index(max_dimension: int) -> dict[str, int]:
    if max_dimension not in _INDEX:
        _INDEX[max_dimension] = {w: i for i, w in enumerate(expr.vocabulary(max_dimension))}
    return _INDEX[max_dimension]


def collate_points(rows: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-trajectory point ids ``(n_i, T)`` into ``points (batch, max n_i, T)`` (padded with
    :data:`INPUT_PAD_ID`) and ``mask (batch, max n_i)`` (True for real points)."""
    n = max(r.shape[0] for r in rows)
    width = rows[0].shape[1]
    points = torch.full((len(rows), n, width), INPUT_PAD_ID, dtype=torch.long)
    mask = torch.zeros(len(rows), n, dtype=torch.bool)
    for i, r in enumerate(rows):
        points[i, : r.shape[0]] = torch.from_numpy(np.asarray(r, dtype=np.int64))
        mask[i, : r.shape[0]] = True
    return points, mask


def collate_targets(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    """Stack output id lists into ``(batch, max len)`` padded with ``<pad>``."""
    n = max(len(r) for r in rows)
    out = torch.full((len(rows), n), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
    return out
