"""The stability doctor: measure unstable gradients, explain them, prescribe the chapter's fixes.

    report = probe(model, x, y)            # one pass, at initialization or at any point
    monitor = Monitor()                    # a callback for gradwell.train.fit, every 200 steps
    print(report); report.to_dict(); report.plot("doctor.png")

Modules: ``layers`` (what is measured), ``stats`` (the statistics and their hooks), ``probe``,
``monitor``, ``rules`` (thresholds, verdicts, fixes), ``report`` and ``plots``, ``scenarios``
(the literature's experiments) and ``checkup`` (on a dataset split or a config).
"""

from gradwell.diagnose.checkup import diagnose_config, diagnose_run, probe_split
from gradwell.diagnose.layers import Layer, find_layers
from gradwell.diagnose.monitor import History, Monitor
from gradwell.diagnose.probe import probe
from gradwell.diagnose.report import LayerReport, Report
from gradwell.diagnose.rules import VERDICTS, Thresholds, Verdict, diagnose
from gradwell.diagnose.scenarios import SCENARIOS, ScenarioResult, run_scenario
from gradwell.diagnose.stats import STATS

__all__ = [
    "SCENARIOS",
    "STATS",
    "VERDICTS",
    "History",
    "Layer",
    "LayerReport",
    "Monitor",
    "Report",
    "ScenarioResult",
    "Thresholds",
    "Verdict",
    "diagnose",
    "diagnose_config",
    "diagnose_run",
    "find_layers",
    "probe",
    "probe_split",
    "run_scenario",
]
