"""The chapter's claims, each an experiment on built-in data with a verdict from the data.

``verdicts`` judges a claim from paired comparisons, ``trials`` builds the experiments at a
scale, and ``catalogue`` holds the claims themselves and runs them (``gradwell claims``).
"""

from gradwell.experiment.claims.catalogue import CLAIMS, Claim, ClaimResult, find, run_claims
from gradwell.experiment.claims.trials import SCALES, Scale
from gradwell.experiment.claims.verdicts import FAILS, HOLDS, INCONCLUSIVE, Part, combine, judge

__all__ = [
    "CLAIMS",
    "FAILS",
    "HOLDS",
    "INCONCLUSIVE",
    "SCALES",
    "Claim",
    "ClaimResult",
    "Part",
    "Scale",
    "combine",
    "find",
    "judge",
    "run_claims",
]
