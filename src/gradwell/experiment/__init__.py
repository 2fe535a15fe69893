"""Honest multi-seed experiments: every config with every seed, paired statistics, reports, claims.

    results = run(["a.toml", "b.toml"], seeds=range(10))
    comparison = write_report(results, "runs/compare", "test_accuracy")
    for pair in comparison.pairs:
        print(pair.verdict, pair.mean_difference, pair.ci)

``run_claims()`` runs the chapter's claims as such experiments (``gradwell claims``), and
``try_fixes.try_fixes()`` the doctor's fixes against the original (``gradwell diagnose --try-fixes``).
"""

from gradwell.experiment.batched import fit_seeds, stack_problem
from gradwell.experiment.claims import CLAIMS, run_claims
from gradwell.experiment.records import Results, RunRecord, higher_is_better
from gradwell.experiment.report import Comparison, compare_results, write_report
from gradwell.experiment.runner import run
from gradwell.experiment.stats import Paired, Summary, holm, paired, summarize

__all__ = [
    "CLAIMS",
    "Comparison",
    "Paired",
    "Results",
    "RunRecord",
    "Summary",
    "compare_results",
    "fit_seeds",
    "higher_is_better",
    "holm",
    "paired",
    "run",
    "run_claims",
    "stack_problem",
    "summarize",
    "write_report",
]
