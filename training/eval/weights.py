"""Reading a user's local weight files: plain tensors only, never a pickled object."""

from __future__ import annotations

from pathlib import Path

import torch


def load_tensors(path: Path, error: type[Exception], wrappers: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (``.safetensors``, or ``.pth``/``.pt`` through ``torch.load(weights_only=True)``,
    which refuses pickled objects). ``wrappers``: keys a training checkpoint may nest the weights under. Anything
    else raises ``error`` naming the file."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses pickled objects: report which file, never run it
        raise error(f"{path}: not a plain state dict of tensors ({type(exc).__name__}: {exc})") from exc
    for key in wrappers:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise error(f"{path}: not a state dict of tensors")
    return state
