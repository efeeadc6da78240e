"""Checkpoints of a run: model, optimiser state, RNG states and trainer state in one folder.

Layout of ``RUN/ckpt/``::

    config.json          the model config           (formers.nn.io.save_model)
    model.safetensors    the weights, tied once     (formers.nn.io.save_model)
    optimizer.safetensors  optimiser state tensors, keyed ``state.<param index>.<name>``
    rng.safetensors      RNG states as tensors: torch CPU (uint8), CUDA per device (uint8),
                         numpy MT19937 keys (int64)
    state.json           step, schedule, train config, best metric, optimiser param groups and
                         scalar state, python / numpy RNG scalars, sha256 of every .safetensors
                         file (checked on load); written last (completion mark)

The files hold the full (unsharded) model and optimiser state whatever the run's world size and
``TrainConfig.parallel`` (a DDP or single-process run saves its model and optimiser as they are;
an FSDP2 run gathers them first, :func:`formers.train.distributed.gather_full_state`), so a
checkpoint loads into a single process, a DDP run or an FSDP2 run of any world size.

Saving is atomic at the folder level: everything is written to a fresh ``RUN/ckpt.tmp-XXXX``,
then the old ``ckpt`` is renamed to ``ckpt.old-XXXX`` and the new folder renamed to ``ckpt``;
stale folders are deleted afterwards. A process killed at any moment therefore leaves either
``ckpt`` or (between the two renames) a complete ``ckpt.old-XXXX``, which :func:`find_checkpoint`
picks up. Nothing is ever unpickled: tensors come from safetensors, the rest from JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from formers.atomic import atomic_write, write_json
from formers.nn.config import ModelConfig
from formers.train.distributed import is_fsdp, load_full_state, unwrap

CKPT = "ckpt"
STATE_FILE = "state.json"
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------
# RNG states (no pickle: byte tensors + JSON scalars)


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The global RNG states as (tensors for safetensors, JSON-able scalars)."""
    tensors = {"torch_cpu": torch.get_rng_state().clone()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s.cpu().clone()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64).copy())
    pv, pstate, pgauss = random.getstate()
    scalars = {
        "numpy": {"name": name, "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "python": {"version": pv, "state": list(pstate), "gauss_next": pgauss},
    }
    return tensors, scalars


def set_rng_state(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> None:
    """Restore the states captured by :func:`rng_state` (CUDA ones only if the device count matches)."""
    torch.set_rng_state(tensors["torch_cpu"].to(torch.uint8))
    cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors)) if f"cuda.{i}" in tensors]
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all([c.to(torch.uint8) for c in cuda])
    n = scalars["numpy"]
    np.random.set_state((n["name"], tensors["numpy_keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    p = scalars["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


# ----------------------------------------------------------------------------------------------
# Optimiser state


LIST = "__list__"  # marks a list-valued optimiser state entry (L-BFGS history) in state.json


def _optimizer_to_flat(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimiser state dict (``Optimizer.state_dict()`` form) as (tensors keyed
    ``state.<param index>.<name>``, JSON metadata).

    A list-valued entry (L-BFGS's ``old_dirs``, ``old_stps``, ``ro``, ``al``) keeps its tensors as
    ``state.<index>.<name>.<i>`` and its layout in the metadata: ``{"__list__": [...]}`` with None
    where item i is a tensor and the plain value (a number or None) otherwise."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{idx}.{k}"] = v.detach().cpu().contiguous()
            elif isinstance(v, (list, tuple)):
                layout = []
                for i, item in enumerate(v):
                    if isinstance(item, torch.Tensor):
                        tensors[f"state.{idx}.{k}.{i}"] = item.detach().cpu().contiguous()
                        layout.append(None)
                    else:
                        layout.append({"value": item})
                scalars.setdefault(str(idx), {})[k] = {LIST: layout}
            else:
                scalars.setdefault(str(idx), {})[k] = v
    groups = []
    for g in sd["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), tuple):
            g["betas"] = list(g["betas"])
        groups.append(g)
    return tensors, {"param_groups": groups, "scalars": scalars}


def _optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    lists: dict[tuple[int, str], list] = {}
    for idx, sc in meta.get("scalars", {}).items():
        for k, v in sc.items():
            if isinstance(v, dict) and LIST in v:
                lists[(int(idx), k)] = [None if item is None else item["value"] for item in v[LIST]]
                state.setdefault(int(idx), {})[k] = lists[(int(idx), k)]
            else:
                state.setdefault(int(idx), {})[k] = v
    for key, v in tensors.items():
        # a fresh aligned copy: safetensors packs tensors at 4-byte offsets, and reductions (the
        # dot products of L-BFGS) over unaligned memory may round differently, breaking exact resume
        v = v.clone()
        _, idx, name = key.split(".", 2)
        head, _, item = name.rpartition(".")
        if (int(idx), head) in lists:
            lists[(int(idx), head)][int(item)] = v
        else:
            state.setdefault(int(idx), {})[name] = v
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# ----------------------------------------------------------------------------------------------
# Saving


def _rename(src: str | Path, dst: str | Path) -> None:
    """One rename (a seam for tests that simulate a crash mid-swap)."""
    os.rename(src, dst)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file(tensors, tmp))


def save_checkpoint(run_dir: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    *, step: int, train_cfg: Any = None, best: dict | None = None,
                    schedule: dict | None = None, extra: dict | None = None,
                    weights: dict[str, torch.Tensor] | None = None,
                    optimizer_state: dict | None = None) -> Path:
    """Write ``run_dir/ckpt`` atomically (see the module docstring) and return its path.

    Args:
        model: the model (DDP / compiled wrappers are unwrapped); must carry ``.cfg``.
        optimizer: its state tensors go to ``optimizer.safetensors`` (None: no optimiser state).
        weights / optimizer_state: the full weights (tied duplicates dropped) and optimiser state
            dict to write instead of ``model``'s and ``optimizer``'s own (an FSDP2 run passes those
            of :func:`formers.train.distributed.gather_full_state`; ``model`` then only gives
            the config).
        step: optimiser steps completed. train_cfg: a Config (stored as a dict) or None.
        best: e.g. ``{"name": "val_bpb", "value": 1.2, "step": 400}``. schedule: facts about the
        learning-rate schedule. extra: any JSON-able trainer facts.
    """
    from formers.nn.io import save_model

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model = unwrap(model)
    tmp = Path(tempfile.mkdtemp(prefix=f"{CKPT}.tmp-", dir=run_dir))
    if weights is not None:
        _save_tensors(tmp / "model.safetensors", weights)
        write_json(tmp / "config.json", model.cfg.to_dict())
    else:
        save_model(model, tmp)
    opt_meta = None
    if optimizer_state is None and optimizer is not None:
        optimizer_state = optimizer.state_dict()
    if optimizer_state is not None:
        opt_tensors, opt_meta = _optimizer_to_flat(optimizer_state)
        _save_tensors(tmp / "optimizer.safetensors", opt_tensors)
    rng_tensors, rng_scalars = rng_state()
    _save_tensors(tmp / "rng.safetensors", rng_tensors)
    checksums = {f.name: _sha256(f) for f in sorted(tmp.glob("*.safetensors"))}
    cfg_dict = train_cfg.to_dict() if hasattr(train_cfg, "to_dict") else train_cfg
    state = {
        "format": FORMAT_VERSION,
        "step": int(step),
        "train_config": cfg_dict,
        "schedule": schedule or {},
        "best": best,
        "optimizer": opt_meta,
        "rng": rng_scalars,
        "torch": torch.__version__,
        "extra": extra or {},
        "sha256": checksums,
    }
    write_json(tmp / STATE_FILE, state)  # last: marks the folder complete
    _fsync_dir(tmp)

    final = run_dir / CKPT
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{CKPT}.old-", dir=run_dir))
        os.rmdir(old)
        _rename(final, old)
    _rename(tmp, final)
    _fsync_dir(run_dir)
    for stale in list(run_dir.glob(f"{CKPT}.old-*")) + list(run_dir.glob(f"{CKPT}.tmp-*")):
        shutil.rmtree(stale, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------------------------
# Loading


def _read_state(folder: Path) -> dict:
    path = folder / STATE_FILE
    if not path.is_file():
        raise ValueError(f"{folder} is not a complete checkpoint: {STATE_FILE} is missing")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is corrupt (not valid JSON): {e}") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise ValueError(f"{path} is corrupt: expected an object with an integer 'step'")
    return state


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_checkpoint(folder: str | Path) -> dict:
    """Check every file listed in ``state.json``'s ``sha256`` against its content; return the state.

    Raises ValueError naming the first file that is missing or whose bytes changed (a corrupted
    file that still parses would otherwise load silently, e.g. as NaN weights).
    """
    folder = Path(folder)
    state = _read_state(folder)
    for name, digest in (state.get("sha256") or {}).items():
        path = folder / name
        if not path.is_file():
            raise ValueError(f"checkpoint file {path} is missing")
        if _sha256(path) != digest:
            raise ValueError(f"checkpoint file {path} is corrupt: its sha256 differs from the one "
                             f"recorded in {folder / STATE_FILE} when it was saved")
    return state


def find_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of ``run_dir``, or None.

    ``ckpt`` when it holds ``state.json``; otherwise (a save killed between its two renames) the
    ``ckpt.old-*`` folder with the highest step. Unfinished ``ckpt.tmp-*`` folders are ignored.
    """
    run_dir = Path(run_dir)
    final = run_dir / CKPT
    if (final / STATE_FILE).is_file():
        return final
    best: tuple[int, Path] | None = None
    for old in run_dir.glob(f"{CKPT}.old-*"):
        try:
            step = _read_state(old)["step"]
        except ValueError:
            continue
        if best is None or step > best[0]:
            best = (step, old)
    return best[1] if best else None


def checkpoint_folder(path: str | Path) -> Path | None:
    """The checkpoint folder that ``path`` names: ``path`` itself when it holds a checkpoint or a
    saved model (``state.json`` or ``model.safetensors``), else its run folder's
    :func:`find_checkpoint`; None when there is none."""
    path = Path(path)
    if (path / STATE_FILE).is_file() or (path / "model.safetensors").is_file():
        return path
    return find_checkpoint(path) if path.is_dir() else None


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise ValueError(f"checkpoint file {path} is missing")
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own types for corrupt headers / data
        raise ValueError(f"checkpoint file {path} is corrupt: {e}") from None


def _config_diff(a: dict, b: dict, limit: int = 8) -> list[str]:
    """The fields where ``a`` (checkpoint) and ``b`` (now) differ, at most ``limit`` of them; led
    by "another kind of model" when each has fields the other lacks (say an LM checkpoint passed
    to an ODEFormer run), which would otherwise list every field of both."""
    keys = sorted(set(a) | set(b))
    diff = [f"{k}: checkpoint {a.get(k)!r} vs now {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]
    head = []
    if set(a) - set(b) and set(b) - set(a):
        def kind(d: dict) -> str:
            return repr(d.get("model") or d.get("arch") or d.get("kind") or "?")

        head = [f"another kind of model ({kind(a)} in the checkpoint, {kind(b)} now)"]
    return head + diff[:limit] + ([f"... and {len(diff) - limit} more"] if len(diff) > limit else [])


def check_model_config(folder: str | Path, cfg: ModelConfig) -> None:
    """Raise ValueError when ``folder/config.json`` is not ``cfg`` (naming the differing fields)."""
    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(f"checkpoint {folder} has no config.json")
    try:
        saved = ModelConfig.from_dict(json.loads(path.read_text(encoding="utf-8"))).to_dict()
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as e:
        raise ValueError(f"{path} is not a valid model config: {e}") from None
    now = json.loads(json.dumps(cfg.to_dict()))
    saved = json.loads(json.dumps(saved))
    if saved != now:
        raise ValueError(f"checkpoint {folder} was saved for a different model config: "
                         + "; ".join(_config_diff(saved, now)))


def _load_weights(model: nn.Module, weights: Path) -> None:
    from safetensors.torch import load_model as st_load

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        missing, unexpected = st_load(model, str(weights), strict=False, device=str(device))
    except Exception as e:
        raise ValueError(f"checkpoint file {weights} is corrupt or does not fit the model: {e}") from None
    if missing or unexpected:
        raise ValueError(f"{weights} does not match the model: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    *, restore_rng: bool = True) -> dict:
    """Load a checkpoint into ``model`` (and ``optimizer``, and the global RNGs); return state.json.

    ``path`` is a checkpoint folder or a run folder (its :func:`find_checkpoint` is used).
    The model's weights are loaded in place (strict: every tensor must match in name and shape).
    An FSDP2-sharded ``model`` (:func:`formers.train.distributed.wrap_fsdp`) keeps its shard of
    the full state; then every rank must call this (a collective).

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ValueError: the checkpoint was saved for a different model config, or a file is missing,
            corrupt or does not match the model / optimiser.
    """
    folder = checkpoint_folder(path)
    if folder is None:
        raise FileNotFoundError(f"no checkpoint found in {path}")
    state = verify_checkpoint(folder)
    model = unwrap(model)
    cfg = getattr(model, "cfg", None)
    if isinstance(cfg, ModelConfig):
        check_model_config(folder, cfg)
    elif callable(getattr(cfg, "to_dict", None)):  # a task's own model family (e.g. forecasters)
        path = folder / "config.json"
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"checkpoint {folder} has no readable config.json: {e}") from None
        now = json.loads(json.dumps(cfg.to_dict()))
        if saved != now:
            raise ValueError(f"checkpoint {folder} was saved for a different model config: "
                             + "; ".join(_config_diff(saved, now)))
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ValueError(f"checkpoint file {weights} is missing")
    if is_fsdp(model):
        if optimizer is not None and state.get("optimizer") is None:
            raise ValueError(f"checkpoint {folder} holds no optimiser state")
        osd = None
        if optimizer is not None:
            osd = _optimizer_from_flat(_load_tensors(folder / "optimizer.safetensors"), state["optimizer"])
        try:
            load_full_state(model, optimizer, _load_tensors(weights), osd)
        except ValueError as e:
            raise ValueError(f"checkpoint {folder}: {e}") from None
        optimizer = None  # loaded
    else:
        _load_weights(model, weights)
    if optimizer is not None:
        if state.get("optimizer") is None:
            raise ValueError(f"checkpoint {folder} holds no optimiser state")
        tensors = _load_tensors(folder / "optimizer.safetensors")
        try:
            optimizer.load_state_dict(_optimizer_from_flat(tensors, state["optimizer"]))
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise ValueError(f"optimiser state in {folder} does not fit the optimiser: {e}") from None
    if restore_rng:
        rng = _load_tensors(folder / "rng.safetensors")
        try:
            set_rng_state(rng, state["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"RNG state in {folder} is corrupt: {e}") from None
    state["path"] = str(folder)
    return state
