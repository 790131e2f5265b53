"""Run an integer program end to end: every GEMM and encoder through the integer simulator.

Host steps (LayerNorm, softmax, GELU, residual adds, class token / position embedding, patchify)
are float32 torch operations, the same ops the fake-quant model uses; every boundary to the
datapath is ``to_fixed`` / ``from_fixed`` of docs/datapath.md section 1.

Images run as a **batch**: each encoder and each GEMM takes all images at once through the batched
layer API (``sim.batched``: ``run_encoder_batch``, ``LayerPlan.run``), which gives exactly the integers of
one call per image (per-patch scales, outlier tiles and capacity stay per image: ``M`` = tokens of one
image), but with one GEMM per linear layer and one call per attention matmul for all images and heads.
Host steps run on the batch like the fake-quant model's.

Backends: ``numba`` (``auto``; the int8 / BLAS / numba simulator) or ``reference`` (the numpy reference,
``run_layer_batch_reference``: one ``run_layer_reference`` per image and head; bit-identical, slow).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vitaccel.sim import batched as sim_batched
from vitaccel.sim import reference as ref

from .program import Program, ProgramError


def layer_api(backend: str = "auto"):
    """``(run_layer, run_encoder)`` of the chosen simulator backend (``auto``/``numba``/``reference``):
    the single-layer API (``sim.simulator`` or ``sim.layer``'s reference)."""
    from vitaccel.sim import layer as sim_layer

    if backend in ("auto", "numba"):
        try:
            from vitaccel.sim import simulator

            return simulator.run_layer, simulator.run_encoder
        except ImportError:
            if backend == "numba":
                raise ProgramError("the numba simulator (sim.simulator) is not available") from None
    return sim_layer.run_layer_reference, sim_layer.run_encoder_reference


def _heads(x: np.ndarray, b: int, n: int, h: int, hd: int, transpose: bool = False) -> np.ndarray:
    """``(B, N, H * hd)`` -> per (image, head) groups ``(B * H, N, hd)`` (``(B * H, hd, N)`` transposed)."""
    y = x.reshape(b, n, h, hd)
    y = y.transpose(0, 2, 3, 1) if transpose else y.transpose(0, 2, 1, 3)
    return np.ascontiguousarray(y).reshape(b * h, *y.shape[2:])


class ProgramRunner:
    """Interpreter of a program's graph for a batch of images.

    Parameters
    ----------
    prog : Program
    backend : {"auto", "numba", "reference"}
    trace : bool
        Keep, per layer (heads as ``LAYER.hJ``), the A codes, outliers, B (runtime operands), acc
        and out of the last image of the last batch, and per quantizer name the codes it produced
        (``codes``).
    """

    def __init__(self, prog: Program, backend: str = "auto", trace: bool = False):
        if backend not in ("auto", "numba", "reference"):
            raise ProgramError(f"unknown simulator backend {backend!r}; expected auto, numba or reference")
        self.prog = prog
        self.reference = backend == "reference"
        if not self.reference:
            layer_api(backend)               # fails early when numba is requested but missing
        self.specs = {n: prog.layer_spec(n) for n in prog.manifest["layers"]}
        self.encs = {n: prog.encoder_spec(n) for n in prog.manifest["encoders"]}
        self.trace = trace
        self.records: dict = {}
        self.codes: dict = {}
        self.saturations = 0
        self.enc_inputs: dict = {}
        self.enc_records: dict = {}
        self._plans: dict = {}
        self._enc_plans: dict = {}

    # -- helpers -------------------------------------------------------------------------------
    def _t(self, key):
        return torch.from_numpy(self.prog.t(key).astype(np.float32))

    def _encode(self, name: str, x: torch.Tensor, record: bool = True):
        """Encode ``x`` ``(G, M, K)``: ``(codes, outliers (n, 4), rows)``, ``rows = (j, z)`` ``(G, M)`` for a
        dynamic per-patch encoder (section 8.1.1), else None."""
        enc = self.encs[name]
        xn = x.detach().contiguous().numpy()
        if self.reference or self.trace:
            res = sim_batched.run_encoder_batch(enc, xn, reference=self.reference, keep_x_fx=self.trace)
        else:
            key = (name, xn.shape[1])
            plan = self._enc_plans.get(key)
            if plan is None:
                plan = self._enc_plans[key] = sim_batched.EncoderPlan(enc, xn.shape[1])
            res = plan.run(xn)
        self.saturations += res.host_saturations
        rows = None if res.row_index is None else (res.row_index, res.row_zero)
        if self.trace and record:
            self._record_encoder(name, name, x[-1], res, -1)
        return res.codes, res.outliers, rows

    def _record_encoder(self, name: str, record_as: str, x_last, res, g: int):
        o = res.outliers
        gi = res.codes.shape[0] - 1 if g < 0 else g
        rec = {"x_fx": np.asarray(res.x_fx[gi], np.int64), "codes": np.asarray(res.codes[gi], np.int64),
               "outliers": o[o[:, 0] == gi][:, 1:]}
        if res.row_index is not None:
            rec.update(row_index=res.row_index[gi], row_zero=res.row_zero[gi])
        self.enc_records[record_as] = rec
        self.enc_inputs.setdefault(name, []).append(x_last.detach().clone())
        q = self.prog.manifest["encoders"][name].get("quantizer")
        if q and record_as == name:
            self.codes[q] = rec["codes"]

    def _plan(self, spec, m: int, b_shape):
        key = (spec.name, m, b_shape)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = sim_batched.LayerPlan(spec, m, b_shape)
        return plan

    def _gemm(self, spec, a_codes, outliers=None, b=None, rows=None):
        """One layer for ``G`` groups; returns the output (torch float32 for ``fixed`` outputs, integer
        codes otherwise) and the batch result (integers, ``acc`` when tracing)."""
        mr = za = None
        if spec.meta.get("dynamic_rows"):
            if rows is None:
                raise ProgramError(f"{spec.name}: a dynamic per-patch A operand needs the encoder's row parameters")
            mr, za = np.asarray(spec.mr)[rows[0]], rows[1]
        fixed = spec.out_fmt.startswith("fixed")
        host_frac = spec.out_frac if fixed and not self.trace else None
        out_dtype = np.int64 if (self.trace or fixed) else (np.uint8 if spec.out_fmt == "ucode" else np.int8)
        o = outliers if outliers is not None and len(outliers) else None
        try:
            if self.reference:
                res = sim_batched.run_layer_batch_reference(spec, a_codes, o, b, mr=mr, za=za, host_frac=host_frac,
                                                            out_dtype=out_dtype, want_acc=self.trace)
            else:
                m = np.shape(a_codes)[1]
                plan = self._plan(spec, m, None if b is None else tuple(np.shape(b)[1:]))
                res = plan.run(a_codes, o, b, mr=mr, za=za, host_frac=host_frac, out_dtype=out_dtype,
                               want_acc=self.trace)
        except ref.DatapathError as exc:  # name the layer (a user error: the program or its capacity)
            hint = ("; calibrate again with a larger --outlier-capacity (or none)"
                    if isinstance(exc, ref.OutlierCapacityError) else "")
            raise type(exc)(f"layer {spec.name}: {exc}{hint}") from None
        self.saturations += int(res.saturations)
        out = res.out
        if fixed:
            out = torch.from_numpy(out if host_frac is not None else ref.from_fixed(out, spec.out_frac))
        return out, res, (mr, za)

    def _record_gemm(self, record_as: str, a_codes, outliers, b, res, g: int, row_params=(None, None), rows=None):
        o = np.zeros((0, 3), np.int64) if outliers is None or not len(outliers) else outliers[outliers[:, 0] == g][:,
                1:]
        rec = {"a_codes": np.asarray(a_codes[g], np.int64), "outliers": o,
               "b": None if b is None else np.asarray(b[g], np.int64), "acc": res.acc[g],
               "out": np.asarray(res.out[g], np.int64)}
        if rows is not None:          # the row parameters the GEMM ran with (dynamic per-patch A operand)
            rec.update(row_index=np.asarray(rows[0][g]), mr=np.asarray(row_params[0][g]),
                       za=np.asarray(row_params[1][g], np.int64))
        self.records[record_as] = rec

    # -- a batch of images ---------------------------------------------------------------------
    def run_image(self, image: torch.Tensor) -> torch.Tensor:
        """Logits (float32) of one image ``(C, H, W)`` (already transformed)."""
        return self.run_batch(image[None])[0]

    @torch.no_grad()
    def run_batch(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, classes)`` (float32) of a batch ``(B, C, H, W)`` (already transformed)."""
        x = images.float()
        if x.dim() != 4:
            raise ProgramError(f"run_batch expects images (B, C, H, W), got shape {tuple(x.shape)}")
        self.enc_inputs = {}
        env: dict = {"image": x}
        codes_env: dict = {}
        bsz = x.shape[0]
        for step in self.prog.graph:
            op = step["op"]
            if op == "patchify":
                env[step["out"]] = _patchify_batch(env[step["in"]], step["patch_size"])
            elif op == "encode":
                codes_env[step["out"]] = self._encode(step["encoder"], env[step["in"]])
            elif op == "gemm":
                self._gemm_step(step, env, codes_env)
            elif op == "embed":
                tok = env[step["in"]]
                cls = self._t(step["cls_token"]).reshape(1, 1, -1).expand(bsz, 1, -1)
                env[step["out"]] = torch.cat([cls, tok], dim=1) + self._t(step["pos_embed"])
            elif op == "layernorm":
                h = env[step["in"]]
                env[step["out"]] = F.layer_norm(h, (h.shape[-1],), self._t(step["weight"]), self._t(step["bias"]),
                                                step["eps"])
            elif op == "add":
                a, b = step["in"]
                env[step["out"]] = env[a] + env[b]
            elif op == "gelu":
                env[step["out"]] = F.gelu(env[step["in"]], approximate=step.get("approximate", "none"))
            elif op == "pool":
                env[step["out"]] = env[step["in"]][:, :1]
            elif op == "attention":
                env[step["out"]] = self._attention(step, env)
            else:
                raise ProgramError(f"unknown graph step {op!r}")
        return env["logits"].reshape(bsz, -1)

    def _gemm_step(self, step, env, codes_env):
        name = step["layer"]
        spec = self.specs[name]
        a = codes_env.get(step["in"])
        if a is None:  # the input is the integer output of a previous GEMM
            a = (env[step["in"]], None, None)
        out, res, row_params = self._gemm(spec, a[0], a[1], rows=a[2])
        env[step["out"]] = out
        if self.trace:
            g = np.shape(a[0])[0] - 1
            self._record_gemm(name, a[0], a[1], None, res, g, row_params, a[2])
            q = spec.meta.get("quantizer_out")
            if q and not isinstance(out, torch.Tensor):
                self.codes[q] = np.asarray(out[g], np.int64)

    def _attention(self, step, env):
        h, hd = step["heads"], step["head_dim"]
        q, k, v = env[step["q"]], env[step["k"]], env[step["v"]]
        bsz, n = q.shape[0], q.shape[1]
        qk, av = self.specs[step["qk"]], self.specs[step["av"]]
        qa, kt, vb = _heads(q, bsz, n, h, hd), _heads(k, bsz, n, h, hd, True), _heads(v, bsz, n, h, hd)
        s, res_qk, _ = self._gemm(qk, qa, None, kt)                    # (B * H, N, N) fixed -> float
        attn = torch.softmax(s, dim=-1)
        a_codes, _, _ = self._encode(step["softmax"], attn, record=False)
        o, res_av, _ = self._gemm(av, a_codes, None, vb)               # (B * H, N, hd) codes
        out = np.ascontiguousarray(o.reshape(bsz, h, n, hd).transpose(0, 2, 1, 3)).reshape(bsz, n, h * hd)
        if self.trace:
            self._trace_attention(step, qa, kt, vb, attn, a_codes, res_qk, res_av, bsz, h, out)
        return out

    def _trace_attention(self, step, qa, kt, vb, attn, a_codes, res_qk, res_av, bsz, h, out):
        enc = self.encs[step["softmax"]]
        last = slice((bsz - 1) * h, bsz * h)
        res = sim_batched.run_encoder_batch(enc, attn[last].contiguous().numpy(), reference=self.reference,
                                            keep_x_fx=True)
        for j in range(h):
            g = (bsz - 1) * h + j
            self._record_gemm(f"{step['qk']}.h{j}", qa, None, kt, res_qk, g)
            self._record_encoder(step["softmax"], f"{step['softmax']}.h{j}", attn[g], res, j)
            self._record_gemm(f"{step['av']}.h{j}", a_codes, None, vb, res_av, g)
        qn = self.prog.manifest["encoders"][step["softmax"]].get("quantizer")
        self.codes[qn] = np.asarray(a_codes[last], np.int64)
        qo = self.specs[step["av"]].meta.get("quantizer_out")
        if qo:
            self.codes[qo] = np.asarray(out[-1], np.int64)


def _patchify_batch(x: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, patches, C * p * p)`` (channel, row, column order within a patch)."""
    b, c, hh, ww = x.shape
    return x.reshape(b, c, hh // p, p, ww // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)


def run_program(prog: Program, images, backend: str = "auto", progress: bool = True,
                batch_size: int = 32) -> torch.Tensor:
    """Logits ``(N, classes)`` of ``images`` (a tensor ``(N, C, H, W)`` or an iterable of image tensors)."""
    from tqdm.auto import tqdm

    runner = ProgramRunner(prog, backend)
    imgs = images if isinstance(images, torch.Tensor) else torch.stack(list(images))
    outs = [runner.run_batch(imgs[i:i + batch_size])
            for i in tqdm(range(0, len(imgs), batch_size), desc="int-sim", disable=not progress, leave=False)]
    return torch.cat(outs) if outs else torch.zeros((0, 0))


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
            bias = lin.exported_bias()
            bias = bias.detach() if bias is not None else None
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
