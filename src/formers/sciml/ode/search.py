"""Token-level decoding of an ODEFormer: beam search and sampling of candidate prefix sequences.

Source: ODEFormer (arXiv 2310.05573), §3 "Inference" and the reference
``model/model_wrapper.py``: ``beam_type="search"`` is beam search with length penalty 1 and early
stopping (the XLM ``BeamHypotheses`` rule: a finished hypothesis scores
sum(log p) / len ** length_penalty, and the search stops once ``beam_size`` hypotheses are
finished); ``beam_type="sampling"`` draws ``beam_size`` independent samples at
``beam_temperature`` (top-p 1). Sampling reuses formers' one generation path
(:func:`formers.nn.generate.generate`).

Both take one trajectory's encoded points: ``points (1, n_points, point_tokens)`` int64 and
return candidate token-id lists (without BOS/EOS), best first for beam search.
"""

from __future__ import annotations

import torch

from formers.nn.generate import SamplingConfig, generate


def _check(points: torch.Tensor, max_len: int, model) -> None:
    if points.dim() != 3 or points.shape[0] != 1:
        raise ValueError(f"decoding takes one trajectory: points (1, n_points, tokens), got {tuple(points.shape)}")
    if not 1 <= max_len < model.cfg.max_seq_len:
        raise ValueError(f"max_len must be in [1, max_output_len - 1 = {model.cfg.max_seq_len - 1}], got {max_len}")


@torch.no_grad()
def beam_search(model, points: torch.Tensor, bos: int, eos: int, beam_size: int = 10,
                max_len: int = 200, length_penalty: float = 1.0) -> list[tuple[float, list[int]]]:
    """Beam search over the decoder, one trajectory.

    Args:
        model: an :class:`~formers.sciml.ode.model.ODEFormer` (eval mode is set here).
        points: (1, n_points, point_tokens) int64.
        bos / eos: start and end token ids. beam_size: K (>= 1). max_len: new tokens at most.
        length_penalty: finished hypotheses score sum(log p) / length ** length_penalty
            (length counts the EOS, as in XLM's ``BeamHypotheses``).
    Returns:
        up to K ``(score, token ids)`` finished hypotheses, best first (ids without BOS/EOS); if no
        hypothesis finished within ``max_len`` the best unfinished ones are returned.
    Raises:
        ValueError: bad shapes or sizes. At K = 1 the result equals greedy decoding.
    """
    _check(points, max_len, model)
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    was_training = model.training
    model.eval()
    dev = points.device
    k = beam_size
    memory = model.encode(points).expand(k, -1, -1)
    cache = model.new_cache()
    seqs = torch.full((k, 1), bos, dtype=torch.long, device=dev)
    scores = torch.full((k,), float("-inf"), device=dev)
    scores[0] = 0.0  # one live hypothesis at the start
    finished: list[tuple[float, list[int]]] = []
    logits = model.decode(seqs, memory, cache=cache)[:, -1]
    for step in range(max_len):
        logp = torch.log_softmax(logits.float(), dim=-1)
        vocab = logp.shape[-1]
        total = (scores[:, None] + logp).view(-1)
        top, idx = total.topk(min(2 * k, total.numel()))
        keep_rows, keep_tok, keep_score = [], [], []
        for s, i in zip(top.tolist(), idx.tolist()):
            if s == float("-inf"):
                break
            row, tok = divmod(i, vocab)
            if tok == eos:
                finished.append((s / (step + 1) ** length_penalty, seqs[row, 1:].tolist()))
            else:
                keep_rows.append(row)
                keep_tok.append(tok)
                keep_score.append(s)
            if len(keep_rows) == k:
                break
        # XLM's early stopping: done once K hypotheses have finished
        if len(finished) >= k or not keep_rows:
            break
        while len(keep_rows) < k:  # fewer live candidates than beams: pad with dead rows
            keep_rows.append(keep_rows[0])
            keep_tok.append(keep_tok[0])
            keep_score.append(float("-inf"))
        rows = torch.tensor(keep_rows, device=dev)
        cache.reorder(rows)
        toks = torch.tensor(keep_tok, device=dev)
        seqs = torch.cat([seqs[rows], toks[:, None]], dim=1)
        scores = torch.tensor(keep_score, device=dev)
        if step == max_len - 1:
            break
        logits = model.decode(toks[:, None], memory, cache=cache)[:, -1]
    if not finished:  # nothing ended within max_len: the live beams, unfinished
        finished = [(s / max(seqs.shape[1] - 1, 1) ** length_penalty, seqs[r, 1:].tolist())
                    for r, s in enumerate(scores.tolist()) if s > float("-inf")]
    model.train(was_training)
    finished.sort(key=lambda h: -h[0])
    return finished[:k]


@torch.no_grad()
def sample(model, points: torch.Tensor, bos: int, eos: int, n_samples: int = 10,
           temperature: float = 0.1, max_len: int = 200, generator: torch.Generator | None = None
           ) -> list[list[int]]:
    """``n_samples`` independent samples at ``temperature`` (top-p 1), one trajectory.

    Returns token-id lists without BOS/EOS; a sample that did not emit EOS within ``max_len`` is
    returned as it stands (it will usually fail to parse and be dropped by the caller).
    Raises ValueError for bad shapes, n_samples < 1 or temperature <= 0 (use beam search for
    greedy decoding).
    """
    _check(points, max_len, model)
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 for sampling (beam search gives greedy), got {temperature}")
    start = torch.full((n_samples, 1), bos, dtype=torch.long, device=points.device)
    out = generate(model, start, SamplingConfig(max_new_tokens=max_len, temperature=temperature,
                                                stop_tokens=[eos]),
                   src=points.expand(n_samples, -1, -1), generator=generator)
    seqs = []
    for row in out[:, 1:].tolist():
        seqs.append(row[:row.index(eos)] if eos in row else row)
    return seqs


@torch.no_grad()
def greedy(model, points: torch.Tensor, point_mask: torch.Tensor | None, bos: int, eos: int,
           max_len: int) -> list[list[int]]:
    """Greedy decoding of a padded batch of trajectories at once (the task's validation).

    points: (batch, n_points, point_tokens) int64; point_mask: (batch, n_points) bool or None.
    Returns one token-id list per trajectory (without BOS/EOS), each equal to
    :func:`beam_search` at beam 1 on that trajectory alone.
    """
    if not 1 <= max_len < model.cfg.max_seq_len:
        raise ValueError(f"max_len must be in [1, max_output_len - 1 = {model.cfg.max_seq_len - 1}], got {max_len}")
    was_training = model.training
    model.eval()
    b = points.shape[0]
    memory = model.encode(points, point_mask)
    cache = model.new_cache()
    tok = torch.full((b, 1), bos, dtype=torch.long, device=points.device)
    done = torch.zeros(b, dtype=torch.bool, device=points.device)
    out = []
    for _ in range(max_len):
        nxt = model.decode(tok, memory, point_mask, cache=cache)[:, -1].argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
        out.append(nxt)
        done = done | (nxt == eos)
        if bool(done.all()):
            break
        tok = nxt[:, None]
    model.train(was_training)
    rows = torch.stack(out, dim=1).tolist()
    return [r[:r.index(eos)] if eos in r else r for r in rows]
