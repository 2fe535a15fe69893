"""A run folder as one HTML page (`gradwell report RUN_DIR`): results, doctor, figures and config.

The page is one self-contained file: its style is inline and its figures are PNG data URIs, it
holds no script and names no URL, so it opens offline, mailed or archived with nothing beside it.
It shows the training path and why the run stopped, the test metrics, the stability doctor's
verdicts with their evidence and fixes, the learning curves (drawn from metrics.jsonl), the
doctor's figure (the trained model probed afresh on its training data, for the histograms, with
the Monitor's history from result.json), the per-layer statistics and the config. A run that
diverged (no model.safetensors) gets the same page without the probe, which says why.

Every text from the run folder is escaped; the page is written atomically, so a failed write
leaves any earlier report as it was.
"""

from __future__ import annotations

import base64
import html
import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gradwell.diagnose import STATS, History, diagnose_run
from gradwell.errors import CheckpointError, GradwellError
from gradwell.files import write_atomically
from gradwell.plots import learning_curves
from gradwell.run_folder import MODEL_FILE, check_run_folder, check_target

REPORT_FILE = "report.html"
MAX_LAYER_ROWS = 40  # a deeper model's table shows evenly spaced layers (result.json has all)
LAYER_COLUMNS = (
    ("act std", "act_std"),
    ("dead", "dead"),
    ("saturated", "saturated"),
    ("grad out scale", "out_grad_scale"),
    ("weight grad norm", "weight_grad_norm"),
)
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       max-width: 1180px; margin: 24px auto; padding: 0 20px; line-height: 1.45; background: #fff; }
h1 { font-size: 1.7em; margin-bottom: 0.1em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; margin-top: 1.6em; }
.muted { color: #59636e; }
table { border-collapse: collapse; margin: 8px 0; font-size: 0.92em; }
th, td { border: 1px solid #d0d7de; padding: 3px 9px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; white-space: nowrap; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
.verdict { border-left: 6px solid; border-radius: 4px; padding: 8px 14px; margin: 12px 0; }
.verdict h3 { margin: 0 0 4px 0; }
.healthy { border-color: #1a7f37; background: #dafbe1; } .healthy h3 { color: #1a7f37; }
.problem { border-color: #cf222e; background: #ffebe9; } .problem h3 { color: #cf222e; }
.error { border: 1px solid #cf222e; background: #ffebe9; padding: 8px 14px; border-radius: 4px; }
.error pre { white-space: pre-wrap; background: none; border: none; margin: 0; padding: 0; }
.note { border: 1px solid #d4a72c; background: #fff8c5; padding: 8px 14px; border-radius: 4px; }
img { max-width: 100%; border: 1px solid #d0d7de; }
pre { background: #f6f8fa; border: 1px solid #d0d7de; padding: 10px; overflow-x: auto; }
"""


@dataclass
class RunRecord:
    """What a report is made of, read from a run folder."""

    run_dir: Path
    result: dict[str, Any]
    config: str  # config.toml as written
    epochs: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl, one object per epoch
    unreadable: int = 0  # lines of metrics.jsonl that were not JSON objects

    @property
    def name(self) -> str:
        return self.run_dir.resolve().name

    @property
    def doctor(self) -> dict[str, Any]:
        return self.result.get("doctor") or {}


def write_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the run folder's report as one self-contained HTML file (default RUN_DIR/report.html).

    GradwellError, before anything is written, when `run_dir` is no run folder with a readable
    result.json or `output` cannot be written; the write itself is atomic.

    >>> from gradwell import config as configs, job
    >>> small = ["data.name=digits", "model.depth=2", "model.width=16", "train.epochs=1"]
    >>> result = job.run(configs.load(None, [*small, "output.progress=false", "output.name=page"]))
    >>> page = write_report(result.run_dir)
    >>> page.name, "Stability doctor" in page.read_text(), "https://" in page.read_text()
    ('report.html', True, False)
    """
    run_dir = check_run_folder(run_dir, needs="result.json")
    target = check_target(Path(output) if output is not None else run_dir / REPORT_FILE, "report")
    page = render(read_run(run_dir))
    try:
        write_atomically(target, page.encode())
    except OSError as error:
        raise GradwellError(f"could not write the report {target}: {error.strerror or error}") from None
    return target


def read_run(run_dir: Path) -> RunRecord:
    """The run folder's result.json, config.toml and metrics.jsonl; CheckpointError naming a
    result.json that cannot be read as the JSON object gradwell train writes."""
    path = run_dir / "result.json"
    try:
        result = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else str(error)
        raise CheckpointError(f"{path} cannot be read as JSON ({reason}): rerun gradwell train") from None
    if not isinstance(result, dict):
        kind = type(result).__name__
        raise CheckpointError(f"{path} holds a JSON {kind}, not the object gradwell train writes")
    record = RunRecord(run_dir, result, (run_dir / "config.toml").read_text(errors="replace"))
    metrics = run_dir / "metrics.jsonl"
    for line in metrics.read_text(errors="replace").splitlines() if metrics.is_file() else []:
        try:
            logs = json.loads(line)
        except json.JSONDecodeError:
            logs = None
        if isinstance(logs, dict):
            record.epochs.append(logs)
        elif line.strip():
            record.unreadable += 1
    return record


def rebuild_history(doctor: dict[str, Any]) -> History | None:
    """The Monitor's History from a doctor's report as JSON (``Report.to_dict()``): the series the
    JSON keeps, NaN for the other statistics and for nulls; None when it has no history.

    >>> saved = {"steps": [0, 5], "layers": ["hidden1", "output"], "loss": [2.3, None], "lr": [0.1, 0.1],
    ...          "grad_norm": [1.0, 2.0], "optimizer": "SGD", "series": {"dead": [[0.5, None], [0.25, None]]}}
    >>> history = rebuild_history({"history": saved, "layers": [{"name": "hidden1", "kind": "relu"}]})
    >>> history.kinds, history.series("dead").tolist(), history.stats.shape[2] == len(STATS)
    (['relu', ''], [[0.5, nan], [0.25, nan]], True)
    """
    saved = doctor.get("history")
    if not saved:
        return None
    kinds = {layer.get("name"): layer.get("kind", "") for layer in doctor.get("layers") or []}
    layers, steps = list(saved.get("layers", [])), list(saved.get("steps", []))
    stats = np.full((len(steps), len(layers), len(STATS)), np.nan)
    for name, rows in (saved.get("series") or {}).items():
        if name in STATS:
            stats[:, :, STATS.index(name)] = np.array(rows, dtype=float).reshape(len(steps), len(layers))
    return History(
        layers=layers,
        kinds=[kinds.get(name, "") for name in layers],
        steps=steps,
        stats=stats,
        loss=[math.nan if v is None else float(v) for v in saved.get("loss", [])],
        lr=[float(v) for v in saved.get("lr", [])],
        grad_norm=[math.nan if v is None else float(v) for v in saved.get("grad_norm", [])],
        optimizer=saved.get("optimizer", ""),
    )


def render(record: RunRecord) -> str:
    """The whole page, every text from the run folder escaped."""
    sections = [
        summary_section(record),
        error_section(record),
        verdicts_section(record.doctor),
        figures_section(record),
        layers_section(record.doctor, diverged="error" in record.result),
        f"<h2>Config</h2>\n<p class='muted'>config.toml, the resolved config (rerun it with "
        f"<code>gradwell train config.toml</code>)</p>\n<pre>{esc(record.config)}</pre>",
    ]
    body = "\n".join(section for section in sections if section)
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>gradwell run {esc(record.name)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>gradwell run {esc(record.name)}</h1>\n<p class='muted'>{esc(record.run_dir.resolve())}</p>\n"
        f"{body}\n</body>\n</html>\n"
    )


def summary_section(record: RunRecord) -> str:
    """How the run ended and what it reached: stop reason, training path, time and metrics."""
    result = record.result
    rows = [("stopped", result.get("stop_reason", "unknown"))]
    if result.get("path"):
        rows.append(("training path", str(result["path"]).removeprefix("training path: ")))
    if "epochs" in result:
        rows.append(("epochs", result["epochs"]))
    if isinstance(result.get("seconds"), int | float):
        rows.append(("time", f"{result['seconds']:.1f} s"))
    rows += [(f"test {name}", value) for name, value in (result.get("test") or {}).items()]
    final = result.get("final") or {}
    rows += [(f"final {k}", v) for k, v in final.items() if k not in ("epoch", "lr", "time")]
    return "<h2>Result</h2>\n" + key_value_table(rows)


def error_section(record: RunRecord) -> str:
    """The error that stopped a run, when one did."""
    error = record.result.get("error")
    return f"<h2>Error</h2>\n<div class='error'><pre>{esc(error)}</pre></div>" if error else ""


def verdicts_section(doctor: dict[str, Any]) -> str:
    """Each verdict of the doctor with its summary, evidence and fixes: healthy green, others red."""
    verdicts = doctor.get("verdicts") or []
    if not verdicts:
        return "<h2>Stability doctor</h2>\n<p class='note'>result.json holds no verdicts of the doctor.</p>"
    cards = []
    for verdict in verdicts:
        name = str(verdict.get("name", "unknown"))
        parts = [f"<h3>{esc(name.replace('_', ' '))}</h3>", f"<p>{esc(verdict.get('summary', ''))}</p>"]
        evidence = verdict.get("evidence") or {}
        if evidence:
            parts.append(key_value_table([(key, value) for key, value in evidence.items()], "evidence"))
        fixes = verdict.get("fixes") or []
        if fixes:
            parts.append("<ul>" + "".join(f"<li>fix: {esc(fix)}</li>" for fix in fixes) + "</ul>")
        if verdict.get("layers"):
            parts.append(f"<p class='muted'>layers: {esc(', '.join(map(str, verdict['layers'])))}</p>")
        kind = "healthy" if name == "healthy" else "problem"
        cards.append(f"<div class='verdict {kind}'>\n" + "\n".join(parts) + "\n</div>")
    if doctor.get("gradients"):
        cards.append(f"<p class='muted'>gradients shown: {esc(doctor['gradients'])}</p>")
    if doctor.get("unseen"):
        cards.append("<p class='note'>not measured: " + "; ".join(esc(n) for n in doctor["unseen"]) + "</p>")
    return "<h2>Stability doctor</h2>\n" + "\n".join(cards)


def figures_section(record: RunRecord) -> str:
    """The learning curves and the doctor's figure as embedded PNGs, or why one is missing."""
    parts = ["<h2>Learning curves</h2>"]
    epochs = [logs for logs in record.epochs if "epoch" in logs]
    if any("loss" in logs or "accuracy" in logs for logs in epochs):
        curves = png_data_uri(lambda path: learning_curves(epochs, path, title=record.name))
        parts.append(f"<img alt='learning curves' src='{curves}'>")
    else:
        parts.append("<p class='note'>metrics.jsonl holds no finished epoch: no curves to draw.</p>")
    if record.unreadable:
        skipped = f"{record.unreadable} line(s) of metrics.jsonl were not JSON objects: left out"
        parts.append(f"<p class='muted'>{skipped}.</p>")
    figure, why_not = doctor_figure(record)
    parts.append("<h2>The doctor's figure</h2>")
    if figure:
        parts.append(
            "<p class='muted'>activation and gradient histograms of the trained model on 256 training "
            "samples, scales by depth, and the Monitor's records during training</p>"
        )
        parts.append(f"<img alt=\"the doctor's figure\" src='{figure}'>")
    else:
        parts.append(f"<p class='note'>no figure: {esc(why_not)}</p>")
    return "\n".join(parts)


def doctor_figure(record: RunRecord) -> tuple[str | None, str]:
    """(the doctor's figure as a data URI, '') or (None, why there is none)."""
    if not (record.run_dir / MODEL_FILE).is_file():
        return None, (
            f"the run folder has no trained model ({MODEL_FILE}): the run stopped before it saved one, "
            "so there is no model to probe for the histograms"
        )
    try:
        report = diagnose_run(record.run_dir)
    except GradwellError as error:
        return None, f"the trained model could not be probed: {error}"
    report.history = rebuild_history(record.doctor)
    title = f"stability doctor: {record.name}"
    return png_data_uri(lambda path: report.plot(path, title=title)), ""


def layers_section(doctor: dict[str, Any], diverged: bool = False) -> str:
    """The per-layer statistics, at most MAX_LAYER_ROWS evenly spaced layers."""
    layers = doctor.get("layers") or []
    if not layers:
        return ""
    shown = np.unique(np.linspace(0, len(layers) - 1, min(len(layers), MAX_LAYER_ROWS)).round().astype(int))
    head = "".join(f"<th>{esc(title)}</th>" for title in ("layer", "kind", *(t for t, _ in LAYER_COLUMNS)))
    rows = []
    for i in shown:
        layer = layers[i]
        cells = [f"<td>{esc(layer.get('name', ''))}</td>", f"<td>{esc(layer.get('kind', ''))}</td>"]
        cells += [f"<td class='number'>{esc(number(layer.get(key), key))}</td>" for _, key in LAYER_COLUMNS]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    caption = (
        f"<p class='muted'>{len(shown)} of {len(layers)} layers, evenly spaced from the first to the "
        "last; result.json has all</p>"
        if len(shown) < len(layers)
        else ""
    )
    table = f"<table>\n<tr>{head}</tr>\n" + "\n".join(rows) + "\n</table>"
    model = "the model as it stood before the step that went non-finite" if diverged else "the trained model"
    return f"<h2>Layers</h2>\n<p class='muted'>{model}, as the run's doctor measured it</p>\n" + (
        caption + table
    )


def key_value_table(rows: list[tuple[str, Any]], header: str = "") -> str:
    """A two-column table of names and values (numbers to 4 significant digits)."""
    head = f"<tr><th colspan='2'>{esc(header)}</th></tr>\n" if header else ""
    cells = "\n".join(f"<tr><th>{esc(key)}</th><td>{esc(value_text(value))}</td></tr>" for key, value in rows)
    return f"<table>\n{head}{cells}\n</table>"


def value_text(value: Any) -> str:
    """A value from result.json as a reader wants it: 4 significant digits, '-' for null."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(value_text(v) for v in value) or "none"
    return str(value)


def number(value: Any, key: str) -> str:
    """A layer statistic: a percentage for fractions of units, 3 significant digits otherwise."""
    if not isinstance(value, int | float):
        return "-"
    return f"{value:.0%}" if key in ("dead", "saturated") else f"{value:.3g}"


def png_data_uri(draw: Callable[[Path], object]) -> str:
    """What `draw(path)` writes as a PNG file, as a data URI (drawn in a temporary folder)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "figure.png"
        draw(path)
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def esc(value: object) -> str:
    """`value` as text safe inside HTML, quotes included."""
    return html.escape(str(value), quote=True)
