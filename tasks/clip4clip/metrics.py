"""Text-video retrieval metrics with the numbers CLIP4Clip reports (R@1/5/10, MdR, MnR).

Ranks are 0-based counts of *competing items scored strictly higher* than the right one,
so ties are broken in the query's favour. This equals the official evaluation whenever the
right item's score is unique in its row (with float similarities, practically always); on an
exact tie the official code is ill-defined (see `retrieval_metrics`) and we keep this rule.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from clipheads.core.errors import UserError

__all__ = ["retrieval_metrics", "multi_sentence_metrics", "single_sentence_metrics"]


def _as_sim(sim: np.ndarray, what: str) -> np.ndarray:
    """A finite, non-empty 2-D float copy of `sim`, or a UserError saying what is wrong."""
    arr = np.asarray(sim, dtype=np.float64)
    if arr.ndim != 2 or arr.size == 0:
        raise UserError(f"{what}: expected a non-empty 2-D similarity matrix, got shape "
                        f"{arr.shape}; pass one row per query and one column per item")
    if not np.isfinite(arr).all():
        raise UserError(f"{what}: similarity matrix has {int((~np.isfinite(arr)).sum())} "
                        "NaN/inf entries; check the features (e.g. zero-norm embeddings)")
    return arr


def _ranks(sim: np.ndarray, right: np.ndarray) -> np.ndarray:
    """0-based rank of item right[q] for each query row q: how many items score strictly higher."""
    target = sim[np.arange(sim.shape[0]), right]
    return (sim > target[:, None]).sum(axis=1)


def _summary(ranks: np.ndarray, lower_median: bool = False) -> dict[str, float]:
    """Recall in percent and 1-based median/mean rank, the way the paper tables print them.

    `lower_median` takes the lower middle value for an even count, as torch.median does in the
    official multi-sentence text-to-video code (np.median, used elsewhere, averages the two).
    """
    n = len(ranks)
    median = float(np.sort(ranks)[(n - 1) // 2]) if lower_median else float(np.median(ranks))
    return {
        "R@1": 100.0 * float(np.sum(ranks < 1)) / n,
        "R@5": 100.0 * float(np.sum(ranks < 5)) / n,
        "R@10": 100.0 * float(np.sum(ranks < 10)) / n,
        "MdR": median + 1.0,
        "MnR": float(np.mean(ranks)) + 1.0,
        "queries": float(n),
    }


def retrieval_metrics(sim: np.ndarray) -> dict[str, float]:
    """Metrics for a square [queries x items] similarity whose right item for query i is item i.

    Same numbers as the official `compute_metrics`: that code sorts each row by descending
    score and takes the position where the sorted row equals the diagonal, i.e. the number of
    strictly higher scores when the diagonal value is unique in its row. When it is not (an
    exact tie with k-1 other items) the official code does not fail but records k positions
    for that one query and divides by the total count of such positions, silently reweighting
    the recalls and ranks; here every query counts once with rank = #strictly higher.
    """
    arr = _as_sim(sim, "retrieval_metrics")
    if arr.shape[0] != arr.shape[1]:
        raise UserError(f"retrieval_metrics: similarity must be square (query i matches item "
                        f"i), got {arr.shape}; use multi_sentence_metrics for several captions "
                        "per video")
    return _summary(_ranks(arr, np.arange(arr.shape[0])))


def single_sentence_metrics(sim: np.ndarray) -> dict[str, dict[str, float]]:
    """Both directions for one caption per video (e.g. MSR-VTT 1k-A): sim is [texts x videos]."""
    arr = _as_sim(sim, "single_sentence_metrics")
    return {"t2v": retrieval_metrics(arr), "v2t": retrieval_metrics(arr.T)}


def multi_sentence_metrics(sim: np.ndarray,
                           caption_video: Sequence[int]) -> dict[str, dict[str, float]]:
    """Both directions for several captions per video (MSVD/DiDeMo-style protocol).

    sim is [captions x videos]; caption_video[i] is the video that caption i describes, and
    every video needs at least one caption.
    t2v: every caption is a query ranked against all videos; MdR is the lower median (as the
    official torch.median); on a tie the official rank comes from an unstable argsort (any
    tied position), here it is the optimistic #strictly higher. v2t: video v is a query, and each video j competes with the best
    score any of j's captions gets against v; the right candidate is v's own caption group.
    """
    arr = _as_sim(sim, "multi_sentence_metrics")
    n_caps, n_vids = arr.shape
    owner = np.asarray(caption_video)
    if owner.ndim != 1 or len(owner) != n_caps:
        count = len(owner) if owner.ndim else 0
        raise UserError(f"multi_sentence_metrics: caption_video has {count} entries but sim has "
                        f"{n_caps} caption rows; give one video id per row")
    if not np.issubdtype(owner.dtype, np.integer):
        raise UserError(f"multi_sentence_metrics: caption_video must hold integer video ids, got "
                        f"dtype {owner.dtype}; pass the column index of each caption's video")
    bad = (owner < 0) | (owner >= n_vids)
    if bad.any():
        raise UserError(f"multi_sentence_metrics: caption_video id {int(owner[bad][0])} is outside "
                        f"0..{n_vids - 1}; ids must index the columns of sim")
    missing = np.setdiff1d(np.arange(n_vids), owner)
    if missing.size:
        raise UserError(f"multi_sentence_metrics: video {int(missing[0])} has no caption, so "
                        "video-to-text is undefined; drop that column or add its captions")
    t2v = _summary(_ranks(arr, owner), lower_median=True)
    # best[j, v]: highest score of any caption of video j against video v.
    best = np.full((n_vids, n_vids), -np.inf)
    np.maximum.at(best, owner, arr)
    v2t = retrieval_metrics(best.T)
    return {"t2v": t2v, "v2t": v2t}
