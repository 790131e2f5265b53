"""GEMM list of a timm ViT / DeiT / Swin model, traced without weights.

Every matrix product the engine runs is one :class:`Gemm`: ``Y[M, N] = A[M, K] @ B[K, N]`` repeated
``count`` times with different operands (``count`` = batch x windows x heads for the per-head attention
products; 1 for a linear layer, whose rows already hold every token of the batch).

The shapes come from a forward pass of ``timm.create_model(name, pretrained=False)`` built on the
PyTorch ``meta`` device (no weights are allocated, no arithmetic is done), with forward hooks on
``nn.Linear``, ``nn.Conv2d`` (patch embedding, lowered to a GEMM) and the attention modules
(``Attention`` of ViT/DeiT, ``WindowAttention`` of Swin: anything with ``num_heads`` and ``qkv``).

Operand roles follow docs/datapath.md section 2: the QKV linear layer becomes three layers ``q``, ``k``,
``v`` sharing one input; ``q @ k^T`` and ``attn @ v`` are ``qk`` and ``av`` GEMMs per head.
"""
from __future__ import annotations

from vitaccel.sim.cli_args import parse_bits
from vitaccel.sim.errors import UserError
from vitaccel.sim.names import suggest_model_names

import functools
import math
from dataclasses import dataclass, replace

#: GEMM kinds, in the order they appear inside a transformer block.
KINDS = ("patch_embed", "q", "k", "v", "qk", "av", "proj", "fc1", "fc2", "merge", "head", "linear")

#: Kinds whose A operand is a post-LayerNorm activation and so carries the sparse outlier path
#: (docs/datapath.md section 5: inputs of q/k/v and FC1).
OUTLIER_KINDS = ("q", "k", "v", "fc1")


@dataclass(frozen=True)
class Gemm:
    """One GEMM of the model (``count`` identical-shape instances).

    Attributes
    ----------
    name : str
        Layer name (timm module path, plus ``.q``/``.k``/``.v``/``.qk``/``.av``).
    kind : str
        One of :data:`KINDS`.
    op : str
        Spec op: ``linear``, ``qk`` or ``av``.
    M, K, N : int
        Rows of A (tokens), reduction depth, columns of B (output channels).
    count : int
        Number of instances (batch x windows x heads for ``qk``/``av``; 1 for linear layers).
    a_bits, b_bits : int
        Code widths of the A and B operands.
    a_fmt : str
        A format (``uniform``, ``log2``, ``shiftlog2``, ``three_region``).
    per_patch : bool
        A operand quantized per patch (a scale / zero point per row: ``Mr[r]``, ``z[r]`` vectors).
    a_zero : bool
        A format has a zero point (``za != 0``), so per-column ``colsum`` is needed at drain.
    out_fmt : str
        Output format (``ucode``, ``scode``, ``fixed16``, ``fixed32``).
    out_bits : int
        Bits per output element.
    outliers : bool
        The A operand carries a sparse outlier list.
    outliers_per_tile : int
        Outliers per tile of ``rows`` consecutive rows (0 when unknown / none).
    block : str
        Transformer block the layer belongs to (for grouping), ``""`` otherwise.
    """

    name: str
    kind: str
    op: str
    M: int
    K: int
    N: int
    count: int = 1
    a_bits: int = 8
    b_bits: int = 8
    a_fmt: str = "uniform"
    per_patch: bool = False
    a_zero: bool = True
    out_fmt: str = "fixed32"
    out_bits: int = 32
    outliers: bool = False
    outliers_per_tile: int = 0
    block: str = ""

    @property
    def macs(self) -> int:
        """Multiply-accumulates of all instances."""
        return self.M * self.K * self.N * self.count

    @property
    def weight_params(self) -> int:
        """Parameters of a stored weight matrix (0 for ``qk``/``av``, whose B is an activation)."""
        return self.K * self.N if self.op == "linear" else 0


# ----------------------------------------------------------------------------------------------
# tracing
# ----------------------------------------------------------------------------------------------


def _model_names() -> list[str]:
    import timm

    return list(timm.list_models())


def suggest_models(name: str, n: int = 5) -> list[str]:
    """Close timm model names (for the unknown-model error message)."""
    return suggest_model_names(name, _model_names(), n)


class UnknownModelError(UserError, ValueError):
    """The model name is not a timm model."""


@dataclass(frozen=True)
class _Raw:
    """One hooked call: module path, kind of hook and the relevant sizes."""

    name: str
    what: str            # "linear", "conv", "attn"
    rows: int            # linear: product of leading dims; conv: output pixels; attn: windows*batch
    k: int
    n: int
    tokens: int = 0      # attn only
    heads: int = 0       # attn only
    head_dim: int = 0    # attn only


@functools.lru_cache(maxsize=16)
def _trace_raw(model: str, batch: int, img_size: int | None) -> tuple[_Raw, ...]:
    import timm
    import torch

    if model not in timm.list_models():
        raise UnknownModelError(model)
    kwargs = {}
    if img_size is not None:
        kwargs["img_size"] = img_size
    with torch.device("meta"):
        net = timm.create_model(model, pretrained=False, **kwargs)
    net.eval()
    _check_img_size(model, net, img_size)
    calls: list[_Raw] = []

    def linear_hook(name):
        def hook(mod, inp, out):
            x = inp[0]
            rows = math.prod(x.shape[:-1])
            calls.append(_Raw(name, "linear", int(rows), mod.in_features, mod.out_features))
        return hook

    def conv_hook(name):
        def hook(mod, inp, out):
            if mod.groups != 1:
                raise NotImplementedError(f"grouped convolution {name} is not a GEMM the engine runs")
            kh, kw = mod.kernel_size
            rows = out.shape[0] * out.shape[2] * out.shape[3]
            calls.append(_Raw(name, "conv", int(rows), mod.in_channels * kh * kw, mod.out_channels))
        return hook

    def attn_hook(name):
        def hook(mod, inp, out):
            x = inp[0]
            heads = int(mod.num_heads)
            qkv_out = mod.qkv.out_features
            head_dim = qkv_out // 3 // heads
            calls.append(_Raw(name, "attn", int(x.shape[0]), 0, 0, tokens=int(x.shape[1]), heads=heads,
                              head_dim=head_dim))
        return hook

    handles = []
    for name, mod in net.named_modules():
        if isinstance(mod, torch.nn.Linear):
            handles.append(mod.register_forward_hook(linear_hook(name)))
        elif isinstance(mod, torch.nn.Conv2d):
            handles.append(mod.register_forward_hook(conv_hook(name)))
        elif hasattr(mod, "num_heads") and isinstance(getattr(mod, "qkv", None), torch.nn.Linear):
            handles.append(mod.register_forward_hook(attn_hook(name)))
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    size = cfg.get("input_size", (3, 224, 224))
    if img_size is not None:
        size = (size[0], img_size, img_size)
    x = torch.empty((batch, *size), device="meta")
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    return tuple(calls)


def _check_img_size(model: str, net, img_size: int | None) -> None:
    """``--img-size`` must be positive and a multiple of the model's patch size (else timm silently
    drops the border pixels or fails deep inside the model)."""
    if img_size is None:
        return
    pe = getattr(net, "patch_embed", None)
    ps = getattr(pe, "patch_size", None)
    p = int(ps[0] if isinstance(ps, (tuple, list)) else ps) if ps is not None else 1
    if img_size < p or img_size % p:
        raise InputSizeError(f"--img-size {img_size} does not fit {model}: the input resolution must be a positive "
                             f"multiple of its patch size {p}")


class InputSizeError(UserError, ValueError):
    """An input resolution the model cannot take."""


def _block_of(name: str) -> str:
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p == "blocks" and i + 1 < len(parts):
            return ".".join(parts[: i + 2])
    if parts[0] == "layers" and len(parts) > 1:
        return ".".join(parts[:2])
    return ""


def _kind_of_linear(name: str, what: str) -> str:
    last = name.split(".")[-1]
    if what == "conv" or "patch_embed" in name:
        return "patch_embed"
    if last in ("proj",) and ".attn." in f".{name}.":
        return "proj"
    if last == "fc1":
        return "fc1"
    if last == "fc2":
        return "fc2"
    if last == "reduction" or "downsample" in name:
        return "merge"
    if last.startswith("head") or name.startswith("head"):
        return "head"
    return "linear"


def trace_gemms(model: str, batch: int = 1, bits: str | tuple[int, int] = "w8a8", *, edge_bits: int | None = 8,
                outliers_per_tile: int = 0, img_size: int | None = None) -> list[Gemm]:
    """The GEMM list of a timm model, in execution order.

    Parameters
    ----------
    model : str
        timm model name (e.g. ``deit_tiny_patch16_224``, ``swin_tiny_patch4_window7_224``).
    batch : int
        Images per inference.
    bits : str or (int, int)
        ``wXaY`` setting (or ``(w_bits, a_bits)``) for every transformer-block GEMM.
    edge_bits : int or None
        Width of patch embedding and classifier head (both operands); the spec allows 8-bit codes
        there whatever the model setting. ``None`` uses ``bits``.
    outliers_per_tile : int
        Assumed outliers per tile for the layers with an outlier path (q, k, v, fc1).
    img_size : int, optional
        Override the model's input resolution.

    Returns
    -------
    list of Gemm
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    wb, ab = parse_bits(bits) if isinstance(bits, str) else bits
    eb = edge_bits
    out: list[Gemm] = []
    for raw in _trace_raw(model, int(batch), img_size):
        block = _block_of(raw.name)
        if raw.what == "attn":
            s, d, h = raw.tokens, raw.head_dim, raw.heads
            cnt = raw.rows * h
            pair = [Gemm(f"{raw.name}.qk", "qk", "qk", s, d, s, cnt, ab, ab, "uniform", False, True,
                         "fixed16", 16, block=block),
                    Gemm(f"{raw.name}.av", "av", "av", s, s, d, cnt, ab, ab, "log2", False, False,
                         "ucode", ab, block=block)]
            # the module hook fires after its proj layer ran: put the products before proj
            at = next((i for i, g in enumerate(out) if g.name == f"{raw.name}.proj"), len(out))
            out[at:at] = pair
            continue
        kind = _kind_of_linear(raw.name, raw.what)
        if raw.name.endswith(".qkv") or raw.name == "qkv":
            base = raw.name[: -len("qkv")]
            n = raw.n // 3
            for sub, fmt, ob in (("q", "ucode", ab), ("k", "scode", ab), ("v", "scode", ab)):
                out.append(Gemm(f"{base}{sub}", sub, "linear", raw.rows, raw.k, n, 1, ab, wb, "uniform", True, True,
                                fmt, ob, True, outliers_per_tile, block))
            continue
        if kind in ("patch_embed", "head"):
            b = eb if eb is not None else None
            a_b, w_b = (b, b) if b is not None else (ab, wb)
            out.append(Gemm(raw.name, kind, "linear", raw.rows, raw.k, raw.n, 1, a_b, w_b, "uniform",
                            kind == "head", True, "fixed32", 32, block=block))
        elif kind == "fc1":
            out.append(Gemm(raw.name, kind, "linear", raw.rows, raw.k, raw.n, 1, ab, wb, "uniform", True, True,
                            "fixed16", 16, True, outliers_per_tile, block))
        elif kind == "fc2":
            # post-GELU shiftlog2 codes: zero point Zs (a constant) -> colsum needed
            out.append(Gemm(raw.name, kind, "linear", raw.rows, raw.k, raw.n, 1, ab, wb, "shiftlog2", False, True,
                            "fixed32", 32, block=block))
        else:  # proj, merge, other linear layers: uniform per-patch input, fixed32 output
            out.append(Gemm(raw.name, kind, "linear", raw.rows, raw.k, raw.n, 1, ab, wb, "uniform", True, True,
                            "fixed32", 32, block=block))
    return out


def with_outliers(gemms: list[Gemm], outliers_per_tile: int) -> list[Gemm]:
    """Copy of ``gemms`` with ``outliers_per_tile`` set on every layer that has an outlier path."""
    return [replace(g, outliers_per_tile=outliers_per_tile) if g.outliers else g for g in gemms]
