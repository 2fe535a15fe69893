"""The stability doctor: measure unstable gradients, explain them, prescribe the chapter's fixes.

    report = probe(model, x, y)            # one pass, at initialization or at any point
    doctor = watch(model, optimizer)       # any training loop: every 200th step measured
    monitor = Monitor()                    # the same, as a callback for gradwell.train.fit
    print(report); report.to_dict(); report.plot("doctor.png")

Modules: ``layers`` (what is measured), ``stats`` (the statistics), ``record`` (the hooks that
measure one pass, traced for any model), ``probe``, ``watch`` (any loop), ``monitor`` (gradwell's),
``history``, ``rules`` (thresholds, verdicts, fixes with their config changes), ``report`` and
``plots``, ``tensorboard``, ``scenarios`` (the literature's experiments) and ``checkup`` (on a
dataset split or a config).
"""

from gradwell.diagnose.checkup import diagnose_config, diagnose_run, probe_split
from gradwell.diagnose.history import History
from gradwell.diagnose.layers import Layer, find_layers
from gradwell.diagnose.monitor import Monitor
from gradwell.diagnose.probe import probe
from gradwell.diagnose.report import LayerReport, Report
from gradwell.diagnose.rules import VERDICTS, Fix, Thresholds, Verdict, diagnose
from gradwell.diagnose.scenarios import SCENARIOS, ScenarioResult, run_scenario
from gradwell.diagnose.stats import STATS
from gradwell.diagnose.tensorboard import TensorBoardLog
from gradwell.diagnose.watch import Doctor, watch

__all__ = [
    "SCENARIOS",
    "STATS",
    "VERDICTS",
    "Doctor",
    "Fix",
    "History",
    "Layer",
    "LayerReport",
    "Monitor",
    "Report",
    "ScenarioResult",
    "TensorBoardLog",
    "Thresholds",
    "Verdict",
    "diagnose",
    "diagnose_config",
    "diagnose_run",
    "find_layers",
    "probe",
    "probe_split",
    "run_scenario",
    "watch",
]
