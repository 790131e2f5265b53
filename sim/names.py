"""Close-name suggestions for "unknown name" errors: one ranking shared by every command."""
from __future__ import annotations

import difflib

__all__ = ["suggest_model_names"]


def suggest_model_names(name: str, known: list[str] | None = None, n: int = 5) -> list[str]:
    """Known model names close to ``name``: same family (text before the first ``_``) first.

    ``deit_tiniest`` suggests ``deit_tiny_patch16_224`` before unrelated names that merely look alike.
    """
    if known is None:
        import timm

        known = list(timm.list_models())
    family = name.split("_")[0].lower()
    same = [m for m in known if m.lower().split("_")[0] == family]

    def score(m: str) -> float:
        return difflib.SequenceMatcher(None, name.lower(), m.lower()).ratio()

    ranked = sorted(same, key=score, reverse=True)[:n]
    others = [m for m in difflib.get_close_matches(name, known, n=n, cutoff=0.6) if m not in ranked]
    return (ranked + others)[:n]
