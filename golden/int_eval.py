"""Run an integer program end to end: every GEMM and encoder through the integer simulator.

Host steps (LayerNorm, softmax, GELU, residual adds, class token / position embedding, patchify)
are float32 torch operations, the same ops the fake-quant model uses; every boundary to the
datapath is ``to_fixed`` / ``from_fixed`` of docs/datapath.md section 1. Each image runs separately
(``M`` = tokens of one image, so per-patch scales line up with rows).

The layer API is ``sim.simulator.run_layer`` / ``run_encoder`` (numba) when available, else the numpy
reference ``run_layer_reference`` / ``run_encoder_reference`` (bit-identical, much slower).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from vitaccel.sim import layer as sim_layer
from vitaccel.sim import reference as ref

from .program import Program, ProgramError


def layer_api(backend: str = "auto"):
    """``(run_layer, run_encoder)`` of the chosen simulator backend (``auto``/``numba``/``reference``)."""
    fast = getattr(sim_layer, "run_layer", None), getattr(sim_layer, "run_encoder", None)
    if fast[0] is None or fast[1] is None:
        try:
            from vitaccel.sim import simulator  # noqa: PLC0415  (numba layer API)

            fast = simulator.run_layer, simulator.run_encoder
        except (ImportError, AttributeError):
            fast = (None, None)
    if backend in ("auto", "numba") and fast[0] is not None and fast[1] is not None:
        return fast
    if backend == "numba":
        raise ProgramError("the numba simulator (sim.layer.run_layer) is not available")
    return sim_layer.run_layer_reference, sim_layer.run_encoder_reference


class ProgramRunner:
    """Interpreter of a program's graph for single images.

    Parameters
    ----------
    prog : Program
    backend : {"auto", "numba", "reference"}
    trace : bool
        Keep, per layer (heads as ``LAYER.hJ``), the A codes, outliers, B (runtime operands), acc
        and out of the last image, and per quantizer name the codes it produced (``codes``).
    """

    def __init__(self, prog: Program, backend: str = "auto", trace: bool = False):
        self.prog = prog
        self.run_layer, self.run_encoder = layer_api(backend)
        self.specs = {n: prog.layer_spec(n) for n in prog.manifest["layers"]}
        self.encs = {n: prog.encoder_spec(n) for n in prog.manifest["encoders"]}
        self.trace = trace
        self.records: dict = {}
        self.codes: dict = {}
        self.saturations = 0
        self.enc_inputs: dict = {}
        self.enc_records: dict = {}

    # -- helpers -------------------------------------------------------------------------------
    def _t(self, key):
        return torch.from_numpy(self.prog.t(key).astype(np.float32))

    def _encode(self, name: str, x: torch.Tensor, record_as: str | None = None):
        enc = self.encs[name]
        x_fx, nsat = ref.to_fixed(x.detach().numpy().astype(np.float32), enc.in_frac, enc.in_bits)
        self.saturations += nsat
        res = self.run_encoder(enc, x_fx)
        if self.trace:
            self.enc_records[record_as or name] = {"x_fx": x_fx, "codes": np.asarray(res.codes),
                                                    "outliers": np.asarray(res.outliers).reshape(-1, 3)}
        q = self.prog.manifest["encoders"][name].get("quantizer")
        if self.trace:
            self.enc_inputs.setdefault(name, []).append(x.detach().clone())
        if self.trace and q:
            self.codes[q] = np.asarray(res.codes)
        rows = None if res.row_index is None else (np.asarray(res.row_index), np.asarray(res.row_zero))
        if self.trace and rows is not None:
            self.enc_records[record_as or name].update(row_index=rows[0], row_zero=rows[1])
        return np.asarray(res.codes), np.asarray(res.outliers), rows

    @staticmethod
    def row_spec(spec, rows):
        """``spec`` with the run-time row parameters of a dynamic per-patch A operand (spec 8.1.1):
        ``Mr[r] = MrL[j[r]]`` (the program's ``mr`` is the ladder's gain table), ``za[r] = z[r]``."""
        if not spec.meta.get("dynamic_rows"):
            return spec
        if rows is None:
            raise ProgramError(f"{spec.name}: a dynamic per-patch A operand needs the encoder's row parameters")
        j, z = rows
        return replace(spec, mr=np.asarray(spec.mr)[j], za=np.asarray(z, np.int64))

    def _gemm(self, name: str, spec, a_codes, outliers=None, b=None, record_as=None, rows=None):
        spec = self.row_spec(spec, rows)
        try:
            res = self.run_layer(spec, a_codes, outliers, b) if b is not None else self.run_layer(spec, a_codes, outliers)
        except ref.DatapathError as exc:  # name the layer (a user error: the program or its capacity)
            hint = ("; calibrate again with a larger --outlier-capacity (or none)"
                    if isinstance(exc, ref.OutlierCapacityError) else "")
            raise type(exc)(f"layer {record_as or name}: {exc}{hint}") from None
        self.saturations += int(getattr(res, "saturations", 0) or 0)
        if self.trace:
            self.records[record_as or name] = {"a_codes": np.asarray(a_codes), "outliers": np.asarray(outliers) if outliers is not None else np.zeros((0, 3), np.int64),
                                               "b": None if b is None else np.asarray(b), "acc": np.asarray(res.acc), "out": np.asarray(res.out)}
            if rows is not None:  # the row parameters the GEMM ran with (dynamic per-patch A operand)
                self.records[record_as or name].update(row_index=np.asarray(rows[0]), mr=np.asarray(spec.mr),
                                                       za=np.asarray(spec.za))
        out = np.asarray(res.out)
        if spec.out_fmt.startswith("fixed"):
            return torch.from_numpy(ref.from_fixed(out, spec.out_frac))
        return out

    # -- one image -----------------------------------------------------------------------------
    def run_image(self, image: torch.Tensor) -> torch.Tensor:
        """Logits (float32) of one image ``(C, H, W)`` (already transformed)."""
        self.enc_inputs = {}
        env: dict = {"image": image.float()}
        codes_env: dict = {}
        for step in self.prog.graph:
            op = step["op"]
            if op == "patchify":
                p = step["patch_size"]
                x = env[step["in"]]
                c, hh, ww = x.shape
                t = x.reshape(c, hh // p, p, ww // p, p).permute(1, 3, 0, 2, 4).reshape(-1, c * p * p)
                env[step["out"]] = t
            elif op == "encode":
                codes_env[step["out"]] = self._encode(step["encoder"], env[step["in"]])
            elif op == "gemm":
                name = step["layer"]
                a = codes_env.get(step["in"])
                if a is None:  # the input is the integer output of a previous GEMM
                    a = (env[step["in"]], None, None)
                spec = self.specs[name]
                out = self._gemm(name, spec, a[0], a[1] if a[1] is not None and len(a[1]) else None, rows=a[2])
                if isinstance(out, torch.Tensor):
                    env[step["out"]] = out
                else:
                    env[step["out"]] = out
                    q = spec.meta.get("quantizer_out")
                    if self.trace and q:
                        self.codes[q] = out
            elif op == "embed":
                tok = env[step["in"]]
                cls = self._t(step["cls_token"])[None, :]
                env[step["out"]] = torch.cat([cls, tok], dim=0) + self._t(step["pos_embed"])
            elif op == "layernorm":
                x = env[step["in"]]
                env[step["out"]] = F.layer_norm(x, (x.shape[-1],), self._t(step["weight"]), self._t(step["bias"]), step["eps"])
            elif op == "add":
                a, b = step["in"]
                env[step["out"]] = env[a] + env[b]
            elif op == "gelu":
                env[step["out"]] = F.gelu(env[step["in"]], approximate=step.get("approximate", "none"))
            elif op == "pool":
                env[step["out"]] = env[step["in"]][:1]
            elif op == "attention":
                env[step["out"]] = self._attention(step, env)
            else:
                raise ProgramError(f"unknown graph step {op!r}")
        logits = env["logits"]
        return logits.reshape(-1)

    def _attention(self, step, env):
        h, hd = step["heads"], step["head_dim"]
        q, k, v = env[step["q"]], env[step["k"]], env[step["v"]]
        qk, av = self.specs[step["qk"]], self.specs[step["av"]]
        outs = []
        soft_codes = []
        for j in range(h):
            cols = slice(j * hd, (j + 1) * hd)
            s = self._gemm(step["qk"], qk, q[:, cols], None, np.ascontiguousarray(k[:, cols].T), record_as=f"{step['qk']}.h{j}")
            attn = torch.softmax(s, dim=-1)
            a_codes, _, _ = self._encode(step["softmax"], attn, record_as=f"{step['softmax']}.h{j}")
            soft_codes.append(a_codes)
            outs.append(self._gemm(step["av"], av, a_codes, None, np.ascontiguousarray(v[:, cols]), record_as=f"{step['av']}.h{j}"))
        if self.trace:
            qn = self.prog.manifest["encoders"][step["softmax"]].get("quantizer")
            self.codes[qn] = np.stack(soft_codes)
        out = np.concatenate(outs, axis=1)
        q = av.meta.get("quantizer_out")
        if self.trace and q:
            self.codes[q] = out
        return out


def run_program(prog: Program, images, backend: str = "auto", progress: bool = True) -> torch.Tensor:
    """Logits ``(N, classes)`` of ``images`` (tensor or iterable of image tensors)."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    runner = ProgramRunner(prog, backend)
    outs = [runner.run_image(img) for img in tqdm(images, desc="int-sim", disable=not progress, leave=False)]
    return torch.stack(outs)


def _patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    c, hh, ww = x.shape
    return x.reshape(c, hh // p, p, ww // p, p).permute(1, 3, 0, 2, 4).reshape(-1, c * p * p)


@torch.no_grad()
def fakequant_codes(qvit, image: torch.Tensor, patch_size: int | None = None) -> dict:
    """Codes of every activation quantizer of the fake-quant model for one image, in program layout.

    Keys are quantizer module names (``blocks.0.attn.qkv.input_quantizer`` ...), values integer
    arrays shaped like the simulator's codes (``(M, K)``; post-softmax ``(heads, N, N)``).
    """
    captured = {}
    hooks = []
    for name, q in qvit.activation_quantizers():
        def hook(mod, inputs, _out, name=name):
            captured[name] = (mod, inputs[0].detach())
        hooks.append(q.register_forward_hook(hook))
    try:
        qvit(image[None])
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name, (mod, x) in captured.items():
        if name.endswith("patch_embed.proj.input_quantizer"):
            p = patch_size or qvit.model.patch_embed.patch_size[0]
            c = mod.quantize(x)[0]
            out[name] = _patchify(c.float(), p).to(torch.int64).numpy()
            continue
        c = mod.quantize(x)
        if name.endswith("qk.b_quantizer"):
            c = c.transpose(-2, -1)
        if name.endswith(("qk.a_quantizer", "qk.b_quantizer", "av.b_quantizer")):
            c = c.permute(0, 2, 1, 3).reshape(c.shape[0], c.shape[2], -1)
        if name.endswith("av.a_quantizer"):
            out[name] = c[0].numpy()
            continue
        out[name] = c.reshape(-1, c.shape[-1]).numpy()
    return out


def compare_codes(sim_codes: dict, fq_codes: dict, log_formats: set | None = None) -> dict:
    """Per quantizer: fraction of differing codes and the largest difference (section 11 check)."""
    rep = {}
    for name, a in sim_codes.items():
        if name not in fq_codes:
            continue
        b = fq_codes[name]
        a = np.asarray(a).reshape(np.shape(b))
        diff = np.abs(a.astype(np.int64) - b.astype(np.int64))
        rep[name] = {"frac_diff": float((diff > 0).mean()), "max_diff": int(diff.max(initial=0)), "n": int(diff.size)}
    return rep


def _module_for_layer(layer: str) -> tuple[str, int | None]:
    """Fake-quant module name of a program layer (and the q/k/v part index for split layers)."""
    if layer == "patch_embed":
        return "patch_embed.proj", None
    for j, part in enumerate("qkv"):
        if layer.endswith(f".attn.{part}"):
            return layer[: -len(part)] + "qkv", j
    return layer, None


@torch.no_grad()
def layer_agreement(qvit, prog: Program, runner: ProgramRunner) -> dict:
    """Layer-local comparison of the last traced image (docs/datapath.md section 11).

    For every GEMM (heads separately) the fake-quant model recomputes the layer in floating point
    *from the simulator's own input codes* (dequantized by the fake-quant quantizers, weights
    fake-quantized by the weight quantizers) and quantizes the result with the next fake-quant
    quantizer; for every encoder it quantizes the simulator's float input. Returns, per name,
    ``frac_diff`` / ``max_diff`` of the codes (``fixed`` outputs: ``rel_err`` of the values).
    """
    mods = dict(qvit.model.named_modules())
    rep = {}
    for name, xs in runner.enc_inputs.items():
        e = prog.manifest["encoders"][name]
        qz = mods[e["quantizer"]]
        if e["kind"] == "log2":
            fq = np.stack([qz.quantize(x).numpy() for x in xs])
            sim = runner.codes[e["quantizer"]]
        else:
            fq = qz.quantize(xs[-1][None])[0].numpy()
            sim = runner.codes[e["quantizer"]]
        sim = np.asarray(sim).reshape(fq.shape).astype(np.int64)
        fq = fq.astype(np.int64)
        if e["kind"] == "three_region":
            # code distance is meaningless across regions: compare values in steps of the coarser region
            k, m0, m1 = e["bits"], e["m0"], e["m1"]

            def step(c):
                neg = (c >> (k - 2)) & 1
                return np.where(neg == 1, 1, np.where((c >> (k - 1)) & 1, 2 ** m1, 2 ** m0))
            vals = [qz.dequantize(torch.from_numpy(c)).double().numpy() / float(qz.export()["s0"]) for c in (fq, sim)]
            steps = np.maximum(step(fq), step(sim))
            d = np.ceil(np.abs(vals[0] - vals[1]) / steps - 1e-6)
        else:
            d = np.abs(fq - sim)
        rep[f"encode:{name}"] = {"frac_diff": float((d > 0).mean()), "max_diff": int(d.max(initial=0))}
    for rname, rec in runner.records.items():
        base = rname.rsplit(".h", 1)[0] if rname.rsplit(".h", 1)[-1].isdigit() and ".h" in rname else rname
        e = prog.manifest["layers"][base]
        qin = mods[e["quantizer_in"]]
        a = torch.from_numpy(rec["a_codes"]).to(torch.int64)
        if "row_index" in rec:  # dynamic per-patch operand: the encoder's per-row ladder scale and zero point
            j = torch.from_numpy(rec["row_index"])
            a_real = qin.dequantize(a[None], rows=(j[None], torch.from_numpy(rec["za"])[None]))[0].double()
            row_scale = qin.ladder().detach()[j]
        else:
            a_real = qin.dequantize(a[None])[0].double()
            row_scale = qin.scale.detach().reshape(-1) if hasattr(qin, "scale") else None
        for r, c, v in np.asarray(rec["outliers"]).reshape(-1, 3).tolist():
            a_real[r, c] = v * float(row_scale[r]) / 2 ** e["fo"]
        if e["b"] == "runtime":
            mm = mods[base]
            b_real = mm.b_quantizer.dequantize(torch.from_numpy(rec["b"]).to(torch.int64)).double()
            bias = None
        else:
            mname, part = _module_for_layer(base)
            lin = mods[mname]
            w = lin.weight_quantizer.fake_quant(lin.weight.detach())
            w = w.reshape(w.shape[0], -1)
            bias = lin.bias.detach() if lin.bias is not None else None
            if part is not None:
                n = w.shape[0] // 3
                w = w[part * n:(part + 1) * n]
                bias = bias[part * n:(part + 1) * n] if bias is not None else None
            b_real = w.T.double()
        y = a_real @ b_real * e["scales"]["gain"]
        if bias is not None:
            y = y + bias.double()
        out = rec["out"]
        if e["out_fmt"] in ("ucode", "scode"):
            qo = mods[e["quantizer_out"]]
            fq = qo.quantize(y.float()).numpy()
            d = np.abs(fq - out)
            rep[rname] = {"frac_diff": float((d > 0).mean()), "max_diff": int(d.max(initial=0))}
        else:
            ys = ref.from_fixed(out, e["out_frac"]).astype(np.float64)
            scale = max(float(y.abs().max()), 1e-12)
            rep[rname] = {"rel_err": float(np.abs(ys - y.numpy()).max() / scale)}
    return rep
