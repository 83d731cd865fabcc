"""Distribution shift: logged observations in units of a candidate's training distribution,
z = (obs - mean) / std under its ONNX normalizer, summarized per observation term from fixed-size
per-column statistics (which the action agreement streams too)."""

from __future__ import annotations

import numpy as np

from deploy.spec import PolicySpec


class ColumnStats:
    """Per-column count, sum, sum of squares and max |x| of rows fed in batches."""

    def __init__(self, width: int):
        self.n = 0
        self.sum = np.zeros(width)
        self.sumsq = np.zeros(width)
        self.max_abs = np.zeros(width)

    def add(self, x: np.ndarray) -> None:
        self.n += len(x)
        self.sum += x.sum(0)
        self.sumsq += np.square(x).sum(0)
        if len(x):
            self.max_abs = np.maximum(self.max_abs, np.abs(x).max(0))

    def mean(self) -> np.ndarray:
        return self.sum / max(self.n, 1)

    def rms(self) -> np.ndarray:
        return np.sqrt(self.sumsq / max(self.n, 1))


def term_slices(spec: PolicySpec) -> dict[str, slice]:
    """Each observation term's block in the flat obs vector (all its history frames)."""
    out, i = {}, 0
    for t in spec.obs:
        out[t.name] = slice(i, i + t.dim)
        i += t.dim
    return out


def shift_summary(spec: PolicySpec, z_abs: ColumnStats, beyond3: np.ndarray) -> dict:
    """Per term: RMS z, mean |z| and the fraction of elements beyond 3 sigma; `score` the mean RMS z."""
    terms = {}
    for name, sl in term_slices(spec).items():
        n = max(z_abs.n, 1) * (sl.stop - sl.start)
        terms[name] = {
            "rms_z": float(np.sqrt(z_abs.sumsq[sl].sum() / n)),
            "mean_abs_z": float(z_abs.sum[sl].sum() / n),
            "max_abs_z": float(z_abs.max_abs[sl].max()),
            "frac_beyond_3sigma": float(beyond3[sl].sum() / n),
        }
    return {"score": float(np.mean([t["rms_z"] for t in terms.values()])), "terms": terms}
