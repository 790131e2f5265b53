"""Per-image evaluation results (``eval --json``) and their honest merge (``vitaccel merge``).

Every result records where it came from (:func:`provenance`): the backend and fake-quant mode,
the model (program content hash, or timm name + weights file hash), the data (hash of the sorted
file list and class map), ``--limit`` with the size of the evaluated set, the shard ``I/N`` and
the images left out by ``--skip-bad-images``. :func:`merge_results` refuses shard sets that do
not add up: results of different programs, backends, data, limits or shard counts, a missing or
repeated shard, lists of different lengths, or indices that are not exactly the shard's images.
"""
from __future__ import annotations

import hashlib
import json
import os

from vitaccel.sim.errors import UserError

__all__ = ["MergeError", "file_sha256", "parse_shard", "provenance", "merge_results", "PROVENANCE_KEYS"]

#: Fields that every shard of one evaluation must share.
PROVENANCE_KEYS = ("backend", "fakequant_mode", "model", "data", "limit", "selected", "skip_bad_images")


class MergeError(UserError):
    """Shard results that cannot be combined into one evaluation."""


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``; ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        i, n = -1, 0
    if not 0 <= i < n:
        raise UserError(f"--shard must be I/N with 0 <= I < N, got {text!r}")
    return i, n


def provenance(*, backend: str, fakequant_mode, model: dict, data: dict, limit, selected: int, shard,
               skip_bad_images: bool) -> dict:
    """The identity of one evaluation (see module docstring)."""
    return {"backend": backend, "fakequant_mode": fakequant_mode, "model": model, "data": data, "limit": limit,
            "selected": int(selected), "shard": list(shard) if shard else [0, 1],
            "skip_bad_images": bool(skip_bad_images)}


def _read(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        raise MergeError(f"cannot read shard result {path}: {exc}") from None
    if not isinstance(doc, dict) or "top5_pred" not in doc or "indices" not in doc:
        raise MergeError(f"{path} is not a per-image eval result (run `vitaccel eval ... --json FILE`)")
    if not isinstance(doc.get("provenance"), dict):
        raise MergeError(f"{path} does not record its program, data and shard (written by an older vitaccel); "
                         "re-run that shard with this version")
    lens = {k: len(doc.get(k) or []) if isinstance(doc.get(k), list) else None
            for k in ("indices", "top5_pred", "labels")}
    if None in lens.values() or len(set(lens.values())) != 1:
        raise MergeError(f"{path} is inconsistent: indices, top5_pred and labels have lengths "
                         f"{lens['indices']}, {lens['top5_pred']}, {lens['labels']}")
    return doc


def _describe(key: str, v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={str(x)[:16]}" for k, x in v.items())
    return repr(v)


def merge_results(paths) -> tuple[list, list, list, dict]:
    """Check and combine shard results; returns ``(indices, top5, labels, info)`` sorted by index.

    ``info`` holds the shared provenance, the shard count and the skipped images of all shards.
    Raises :class:`MergeError` naming the file and the field for any inconsistency.
    """
    docs = [(str(p), _read(str(p))) for p in paths]
    p0, d0 = docs[0]
    ref = d0["provenance"]
    for path, doc in docs[1:]:
        prov = doc["provenance"]
        for key in PROVENANCE_KEYS:
            if prov.get(key) != ref.get(key):
                raise MergeError(f"{path} and {p0} come from different evaluations: {key} differs "
                                 f"({_describe(key, prov.get(key))} vs {_describe(key, ref.get(key))})")
    n = ref["shard"][1]
    seen: dict = {}
    for path, doc in docs:
        i, nn = doc["provenance"]["shard"]
        if nn != n:
            raise MergeError(f"{path} is shard {i}/{nn} but {p0} is a shard of {n}: different shard counts")
        if i in seen:
            raise MergeError(f"shard {i}/{n} appears in more than one shard file: {seen[i]} and {path}")
        seen[i] = path
    missing = [f"{i}/{n}" for i in range(n) if i not in seen]
    if missing:
        raise MergeError(f"shard(s) {', '.join(missing)} missing: got {len(seen)} of {n} shard files; run "
                         f"`vitaccel eval ... --shard I/{n} --json FILE` for each and merge all of them")
    sel = ref["selected"]
    rows, skipped = {}, []
    for path, doc in docs:
        i, _ = doc["provenance"]["shard"]
        skip = {int(s["index"]) for s in doc.get("skipped", [])}
        expect = [j for j in range(i, sel, n) if j not in skip]
        if list(doc["indices"]) != expect:
            raise MergeError(f"{path}: its image indices are not exactly those of shard {i}/{n} of {sel} images "
                             f"({len(doc['indices'])} listed, {len(expect)} expected)")
        for j, t, y in zip(doc["indices"], doc["top5_pred"], doc["labels"]):
            rows[j] = (t, y)
        skipped += doc.get("skipped", [])
    order = sorted(rows)
    info = {"provenance": {k: ref.get(k) for k in PROVENANCE_KEYS}, "shards": n,
            "skipped": sorted(skipped, key=lambda s: s["index"]), "files": [os.path.basename(p) for p, _ in docs]}
    return order, [rows[j][0] for j in order], [rows[j][1] for j in order], info
