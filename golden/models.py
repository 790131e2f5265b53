"""Model creation: timm 1.x ViT/DeiT/Swin by name, or the embedded ``vitaccel-digits`` default.

Weights come from a local file (``--weights FILE``, ``.safetensors`` or ``.pth``) through
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=PATH))``; without a file
the model is randomly initialised (with a warning) unless the user asks for timm's hub download.
"""
from __future__ import annotations


import os
import warnings

import torch
from torch import nn

from vitaccel.sim.errors import UserError
from vitaccel.sim.names import suggest_model_names

EMBEDDED_NAME = "vitaccel-digits"


def _known_models() -> list[str]:
    import timm

    return list(timm.list_models()) + [EMBEDDED_NAME]


def check_model_name(name: str) -> None:
    """Raise :class:`UserError` with close suggestions if ``name`` is not a known model."""
    known = _known_models()
    if name in known:
        return
    close = suggest_model_names(name, known)
    hint = f"; did you mean: {', '.join(close)}?" if close else " (see timm.list_models())"
    raise UserError(f"unknown model {name!r}{hint}")


def _check_weights_file(path: str) -> None:
    if not os.path.isfile(path):
        raise UserError(f"weights file not found: {path}")
    if not path.endswith((".safetensors", ".pth", ".pt", ".bin")):
        raise UserError(f"weights file {path} must be .safetensors or .pth")
    if path.endswith(".safetensors"):
        try:
            from safetensors import safe_open

            with safe_open(path, "pt") as f:
                list(f.keys())
        except Exception as exc:  # corrupt header / truncated file
            raise UserError(f"cannot read weights file {path}: corrupt or not a safetensors file ({exc})") from None


def _check_state_dict(sd, path: str) -> None:
    """Raise :class:`UserError` unless ``sd`` is a dict of parameter name -> tensor."""
    if not isinstance(sd, dict):
        raise UserError(f"weights file {path} holds a {type(sd).__name__}, not a state dict (a dict of parameter "
                        "name -> tensor, as saved by torch.save(model.state_dict(), path))")
    for k, v in sd.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise UserError(f"weights file {path} is not a state dict: entry {k!r} holds a {type(v).__name__}, "
                            "not a tensor")


def _load_state_dict_strict(model: nn.Module, path: str) -> None:
    """Load ``path`` into ``model`` listing missing/unexpected keys and shape mismatches clearly."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(path)
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
                sd = sd["model"]
            elif isinstance(sd, dict) and "state_dict" in sd:
                sd = sd["state_dict"]
    except Exception as exc:
        raise UserError(f"cannot read weights file {path}: corrupt or unsupported ({exc})") from None
    _check_state_dict(sd, path)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def few(xs):
            return ", ".join(xs[:8]) + (f" ... ({len(xs)} in all)" if len(xs) > 8 else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {few(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {few(shapes)}")
        raise UserError(f"weights {path} do not match the model: " + "; ".join(parts))
    model.load_state_dict(sd)


def create_model(name: str, weights: str | None = None, pretrained_download: bool = False,
                 num_classes: int | None = None) -> nn.Module:
    """Create a float model ready for quantization (``eval()`` mode).

    Parameters
    ----------
    name : str
        timm model name or ``"vitaccel-digits"``.
    weights : str, optional
        Local checkpoint (.safetensors / .pth). Key or shape mismatches raise :class:`UserError`.
    pretrained_download : bool
        Allow timm to download the pretrained weights when ``weights`` is not given.
    """
    check_model_name(name)
    if name == EMBEDDED_NAME:
        try:
            from .embedded import create_embedded_model
        except ImportError as exc:
            raise UserError(f"the embedded model is not available: {exc}") from None
        if weights:
            _check_weights_file(weights)
            model = create_embedded_model(pretrained=False)
            _load_state_dict_strict(model, weights)
            return model.eval()
        return create_embedded_model().eval()
    import timm

    kw = {} if num_classes is None else {"num_classes": num_classes}
    if weights:
        _check_weights_file(weights)
        model = timm.create_model(name, pretrained=False, **kw)
        try:
            _load_state_dict_strict(model, weights)  # timm key layout: clear key/shape errors
        except UserError as exc:
            # other layouts (original DeiT/ViT checkpoints): timm's own loader applies the model's
            # checkpoint filter; if that fails too, report the key mismatch of the direct load
            try:
                model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=weights), **kw)
            except Exception:
                raise exc from None
        return model.eval()
    if pretrained_download:
        return timm.create_model(name, pretrained=True, **kw).eval()
    warnings.warn(f"no --weights given: {name} is randomly initialised (accuracy will be chance level); "
                  "pass --weights FILE or --pretrained-download", stacklevel=2)
    return timm.create_model(name, pretrained=False, **kw).eval()
