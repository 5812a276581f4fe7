"""Judge calibration: ladders of known order built from the user's own responses, a reliability card.

transforms.py (the degradations), ladder.py (building ladders), metrics.py (the card's figures and
verdict), run.py (a judge scores the ladders; a `calibrate` job), cards.py (identity, lookup).
"""

from .cards import CardView, calibration_cards, card_for, card_lines, judge_identity
from .ladder import DEFAULT_LADDERS, DEFAULT_RUNGS, MAX_RUNGS, Ladder, Rung, build_ladder, choose_sources
from .metrics import (
    CANNOT,
    SEPARATES,
    VERDICTS,
    WEAK,
    Card,
    PairVerdict,
    RungScore,
    compute_card,
    kendall_tau_b,
)
from .run import DEFAULT_ATTEMPTS, MODES, calibrate_judge, permuted_rubric

__all__ = [
    "CANNOT", "DEFAULT_ATTEMPTS", "DEFAULT_LADDERS", "DEFAULT_RUNGS", "MAX_RUNGS", "MODES", "SEPARATES",
    "VERDICTS", "WEAK", "Card", "CardView", "Ladder", "PairVerdict", "Rung", "RungScore", "build_ladder",
    "calibrate_judge", "calibration_cards", "card_for", "card_lines", "choose_sources", "compute_card",
    "judge_identity", "kendall_tau_b", "permuted_rubric",
]  # fmt: skip
