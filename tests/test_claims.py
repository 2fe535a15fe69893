"""The claims suite: every claim runs (at the tiny test scale) and reports every field."""

import json
import pickle

import numpy as np
import pytest
from conftest import gradwell

from gradwell.errors import GradwellError
from gradwell.experiment.claims import (
    CLAIMS,
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    SCALES,
    Part,
    combine,
    find,
    judge,
    run_claims,
)
from gradwell.experiment.stats import paired

VERDICTS = {HOLDS, FAILS, INCONCLUSIVE}


def check_schema(claim: dict, seeds: int) -> None:
    assert set(claim) >= {
        "number",
        "name",
        "statement",
        "setup",
        "verdict",
        "expected",
        "metric",
        "n_seeds",
        "configs",
        "difference",
        "p_value",
        "parts",
        "seconds",
    }
    assert claim["verdict"] in VERDICTS and claim["n_seeds"] == seeds and claim["seconds"] > 0
    assert claim["expected"] and claim["statement"] and claim["setup"]
    for summary in claim["configs"].values():
        assert set(summary) >= {"n", "mean", "std", "ci", "failed", "metric"}
    assert set(claim["difference"]) == {"mean", "ci", "n"}
    for part in claim["parts"]:
        assert part["verdict"] in VERDICTS
        assert set(part) >= {
            "expected",
            "metric",
            "mean_difference",
            "ci",
            "p_t",
            "p_wilcoxon",
            "effect_size",
        }


def test_every_claim_runs_and_reports_its_fields():
    results = run_claims(scale="smoke", workers=0)
    assert [r.number for r in results] == list(range(1, len(CLAIMS) + 1))
    for result in results:
        claim = json.loads(json.dumps(result.to_dict(), allow_nan=False))
        check_schema(claim, SCALES["smoke"].seeds)
        assert all(r.ok for r in result.results.records), result.notes


def test_claims_command_json(tmp_path):
    command = ["claims", "--smoke", "--json", "--only", "7", "--only", "clipping", "--workers", "0"]
    done = gradwell(*command, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    claims = json.loads(done.stdout)
    assert [c["name"] for c in claims] == ["clipping", "momentum"]
    for claim in claims:
        check_schema(claim, SCALES["smoke"].seeds)


def test_claims_are_found_by_name_or_number():
    assert [n for n, _ in find(["momentum", "1", "he-init"])] == [1, 7]
    with pytest.raises(GradwellError, match="valid: he-init"):
        find(["he_init2"])


def test_every_claim_can_travel_to_a_worker_process():
    for claim in CLAIMS:
        for arm in claim.arms(SCALES["smoke"]).values():
            pickle.loads(pickle.dumps(arm))
        if claim.evaluate is not None:
            pickle.loads(pickle.dumps(claim.evaluate(SCALES["smoke"])))


@pytest.fixture
def base():
    return np.random.default_rng(3).normal(0.8, 0.02, 10)


def verdict_of(expect, a, b, margin=0.0, metric="test_accuracy"):
    part = Part("a", "b", expect, metric, margin=margin)
    return judge(part, paired(a, b, names=("a", "b"), metric=metric, higher_is_better="loss" not in metric))


def test_parts_are_judged_from_the_interval(base):
    noise = np.random.default_rng(4).normal(0, 0.004, 10)
    ahead, same = base + 0.05 + noise, base + noise
    assert verdict_of("better", ahead, base) == HOLDS
    assert verdict_of("better", base, ahead) == FAILS
    assert verdict_of("better", same, base) == INCONCLUSIVE
    assert verdict_of("better", base, ahead, metric="loss") == HOLDS  # a lower loss is better
    assert verdict_of("at_least", same, base, margin=0.01) == HOLDS
    assert verdict_of("at_least", base, ahead, margin=0.01) == FAILS
    assert verdict_of("similar", same, base, margin=0.01) == HOLDS
    assert verdict_of("similar", ahead, base, margin=0.01) == FAILS
    assert verdict_of("similar", same, base, margin=0.0001) == INCONCLUSIVE
    assert verdict_of("no_gain", same, base, margin=0.01) == HOLDS
    assert verdict_of("no_gain", ahead, base, margin=0.01) == FAILS
    assert verdict_of("better", [0.9], [0.8]) == INCONCLUSIVE  # one seed settles nothing


def test_parts_combine_into_the_claims_verdict():
    assert combine([HOLDS, HOLDS], "all") == HOLDS
    assert combine([HOLDS, INCONCLUSIVE], "all") == INCONCLUSIVE
    assert combine([HOLDS, FAILS], "all") == FAILS
    assert combine([INCONCLUSIVE, HOLDS], "any") == HOLDS
    assert combine([INCONCLUSIVE, FAILS], "any") == FAILS
    assert combine([INCONCLUSIVE, INCONCLUSIVE], "any") == INCONCLUSIVE
