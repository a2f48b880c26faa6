"""CLIP4Clip retrieval metrics: official-formula parity, ties, multi-sentence, bad input."""
from __future__ import annotations

import numpy as np
import pytest

from clipheads.core.errors import UserError
from clipheads.tasks.clip4clip.metrics import (multi_sentence_metrics, retrieval_metrics,
                                               single_sentence_metrics)


def reference_positions(sim: np.ndarray) -> np.ndarray:
    """REFERENCE for the official compute_metrics formula (our wording of the same numpy steps):
    negate and sort each row ascending, subtract the negated diagonal, and keep the column
    index of every exact zero, in row-major order. One entry per query only if no row has a
    tie with its diagonal value."""
    diff = np.sort(-sim, axis=1) - np.diag(-sim)[:, None]
    return np.nonzero(diff == 0)[1]


def reference_metrics(sim: np.ndarray) -> dict[str, float]:
    """The official summary of those positions: recalls over len(positions), np.median + 1."""
    pos = reference_positions(sim)
    return {"R@1": float(np.sum(pos == 0)) * 100 / len(pos),
            "R@5": float(np.sum(pos < 5)) * 100 / len(pos),
            "R@10": float(np.sum(pos < 10)) * 100 / len(pos),
            "MdR": float(np.median(pos)) + 1, "MnR": float(np.mean(pos)) + 1,
            "queries": float(len(pos))}


def _float_sims():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 30, 64):
        yield rng.standard_normal((n, n)).astype(np.float32)
    # a scaled-up diagonal, like a half-trained model
    yield rng.standard_normal((50, 50)) + 2.0 * np.eye(50)


def _int_sims():
    """Integer scores with many ties among wrong items; the diagonal gets a half-integer so it
    never ties in its row (the one case where the official formula is ill-defined)."""
    rng = np.random.default_rng(1)
    for n in (3, 12, 40):
        sim = rng.integers(0, 5, size=(n, n)).astype(np.float64)
        sim[np.arange(n), np.arange(n)] = rng.integers(0, 5, size=n) + 0.5
        yield sim


@pytest.mark.parametrize("sim", list(_float_sims()) + list(_int_sims()))
def test_matches_official_formula(sim):
    ours = retrieval_metrics(sim)
    ref = reference_metrics(sim)
    assert ref["queries"] == sim.shape[0]
    assert ours == pytest.approx(ref, abs=1e-12)


def test_ties_with_diagonal_rank_optimistically():
    sim = np.array([[1.0, 2.0, 1.0, 0.0],   # one higher, one tie -> 0-based rank 1
                    [5.0, 5.0, 5.0, 5.0],   # all tied            -> 0
                    [0.0, 3.0, 3.0, 3.0],   # ties, none higher   -> 0
                    [4.0, 4.0, 4.0, 1.0]])  # three higher        -> 3
    m = retrieval_metrics(sim)
    # ranks [1, 0, 0, 3]: R@1 2/4, MdR median(0,0,1,3)+1 = 1.5, MnR 4/4+1 = 2
    assert m == {"R@1": 50.0, "R@5": 100.0, "R@10": 100.0, "MdR": 1.5, "MnR": 2.0,
                 "queries": 4.0}
    # the official formula instead yields one position per tied entry: 2 + 4 + 3 + 1 = 10
    # positions for 4 queries, reweighting the averages
    assert reference_positions(sim).tolist() == [1, 2, 0, 1, 2, 3, 0, 1, 2, 3]


def test_single_sentence_is_both_directions():
    sim = np.random.default_rng(2).standard_normal((9, 9))
    both = single_sentence_metrics(sim)
    assert both["t2v"] == reference_metrics(sim)
    assert both["v2t"] == reference_metrics(sim.T)


# video 0 has captions 0-1, video 1 has caption 2, video 2 has captions 3-5
CAPTION_VIDEO = [0, 0, 1, 2, 2, 2]
SIM = np.array([[0.9, 0.1, 0.2],   # caption 0 (video 0): nothing higher than 0.9 -> rank 0
                [0.3, 0.8, 0.1],   # caption 1 (video 0): 0.8 beats 0.3           -> rank 1
                [0.2, 0.7, 0.9],   # caption 2 (video 1): 0.9 beats 0.7           -> rank 1
                [0.1, 0.2, 0.6],   # caption 3 (video 2): top                     -> rank 0
                [0.5, 0.4, 0.7],   # caption 4 (video 2): top                     -> rank 0
                [0.6, 0.1, 0.2]])  # caption 5 (video 2): 0.6 beats 0.2          -> rank 1


def test_multi_sentence_hand_example():
    out = multi_sentence_metrics(SIM, CAPTION_VIDEO)
    # t2v ranks [0,1,1,0,0,1] -> sorted [0,0,0,1,1,1]: R@1 3/6 = 50, MnR 3/6+1 = 1.5,
    # MdR = lower median 0, +1 = 1.0 (torch.median, as the official; np.median would give 1.5)
    assert out["t2v"] == pytest.approx({"R@1": 50.0, "R@5": 100.0, "R@10": 100.0,
                                        "MdR": 1.0, "MnR": 1.5, "queries": 6.0})
    # best caption score of each video's group (rows) against each video (columns):
    #   group 0 = max(c0, c1) = [0.9, 0.8, 0.2]; group 1 = c2 = [0.2, 0.7, 0.9]
    #   group 2 = max(c3, c4, c5) = [0.6, 0.4, 0.7]
    # query video 0 scores groups [0.9, 0.2, 0.6], own 0.9 -> rank 0
    # query video 1 scores groups [0.8, 0.7, 0.4], own 0.7 -> rank 1
    # query video 2 scores groups [0.2, 0.9, 0.7], own 0.7 -> rank 1
    # v2t ranks [0,1,1]: R@1 1/3, MdR 1+1 = 2, MnR 2/3+1
    assert out["v2t"] == pytest.approx({"R@1": 100 / 3, "R@5": 100.0, "R@10": 100.0,
                                        "MdR": 2.0, "MnR": 5 / 3, "queries": 3.0})


def test_multi_sentence_caption_order_does_not_matter():
    rng = np.random.default_rng(3)
    owner = rng.permutation(np.repeat(np.arange(20), rng.integers(1, 5, size=20)))
    sim = rng.standard_normal((len(owner), 20))
    perm = rng.permutation(len(owner))
    assert multi_sentence_metrics(sim, owner) == multi_sentence_metrics(sim[perm], owner[perm])


def test_multi_sentence_one_caption_each_matches_single():
    sim = np.random.default_rng(4).standard_normal((11, 11))
    multi = multi_sentence_metrics(sim, list(range(11)))
    single = single_sentence_metrics(sim)
    assert multi["v2t"] == single["v2t"]
    assert multi["t2v"]["R@1"] == single["t2v"]["R@1"]
    assert multi["t2v"]["MnR"] == single["t2v"]["MnR"]


@pytest.mark.parametrize("call, words", [
    (lambda: retrieval_metrics(np.zeros((3, 4))), "square"),
    (lambda: retrieval_metrics(np.zeros(3)), "2-D"),
    (lambda: retrieval_metrics(np.zeros((0, 0))), "non-empty"),
    (lambda: retrieval_metrics(np.array([[1.0, np.nan], [0.0, 1.0]])), "NaN"),
    (lambda: single_sentence_metrics(np.array([[np.inf, 0.0], [0.0, 1.0]])), "NaN/inf"),
    (lambda: multi_sentence_metrics(SIM, CAPTION_VIDEO[:-1]), "5 entries"),
    (lambda: multi_sentence_metrics(SIM, [0, 0, 1, 2, 2, 3]), "outside 0..2"),
    (lambda: multi_sentence_metrics(SIM, [0, 0, 1, 2, 2, -1]), "outside 0..2"),
    (lambda: multi_sentence_metrics(SIM, [0.0, 0, 1, 2, 2, 2]), "integer"),
    (lambda: multi_sentence_metrics(SIM, [0, 0, 0, 2, 2, 2]), "video 1 has no caption"),
    (lambda: multi_sentence_metrics(np.where(SIM > 0.85, np.nan, SIM), CAPTION_VIDEO), "NaN"),
])
def test_bad_input_raises_user_error(call, words):
    with pytest.raises(UserError, match=words) as info:
        call()
    assert "\n" not in str(info.value)
