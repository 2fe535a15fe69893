"""gradwell.run_report and `gradwell report`: one self-contained HTML page per run folder, checked as
text and rendered in headless Chromium."""

import base64
import html
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from gradwell import config as configs
from gradwell import job
from gradwell.cli import main
from gradwell.diagnose import STATS
from gradwell.errors import GradwellError, NonFiniteError
from gradwell.run_report import MAX_LAYER_ROWS, layers_section, rebuild_history, write_report

SMALL = ["data.name=digits", "model.depth=2", "model.width=16", "output.progress=false"]
DIVERGING = ["model.batchnorm=none", "optimizer.name=sgd", "optimizer.lr=1000.0", "schedule.name=none"]
SERIES = ("weight_grad_norm", "update_ratio", "dead", "saturated", "act_std")  # what result.json keeps


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    return job.run(configs.load(None, [*SMALL, "train.epochs=2", f"output.dir={folder}", "output.name=ok"]))


@pytest.fixture(scope="module")
def page(trained):
    """The trained run's report, written once: (path, text)."""
    path = write_report(trained.run_dir)
    return path, path.read_text()


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    """A run folder of a run that went non-finite in its first epoch: no weights, no metrics."""
    folder = tmp_path_factory.mktemp("runs")
    with pytest.raises(NonFiniteError):
        job.run(configs.load(None, [*SMALL, *DIVERGING, f"output.dir={folder}", "output.name=bad"]))
    return folder / "bad"


@pytest.fixture
def copy_of_diverged(diverged, tmp_path):
    return shutil.copytree(diverged, tmp_path / "bad")


def sources(text: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*['"]?([^'" >]*)""", text, re.I)


def test_the_page_is_one_self_contained_file(page):
    path, text = page
    assert path.name == "report.html" and text.startswith("<!DOCTYPE html>")
    assert "http://" not in text and "https://" not in text and "url(" not in text
    assert "<script" not in text.lower() and "<link" not in text.lower() and "@import" not in text
    images = sources(text)
    assert len(images) == 2  # the learning curves and the doctor's figure
    for uri in images:
        assert uri.startswith("data:image/png;base64,")
        assert base64.b64decode(uri.partition(",")[2]).startswith(b"\x89PNG\r\n\x1a\n")


def test_the_page_shows_the_result_the_doctor_and_the_config(trained, page):
    _, text = page
    result = json.loads((trained.run_dir / "result.json").read_text())
    assert f"gradwell run {trained.run_dir.name}" in text
    assert html.escape(result["path"].removeprefix("training path: ")) in text
    assert html.escape(result["stop_reason"]) in text and "test accuracy" in text
    for verdict in result["doctor"]["verdicts"]:
        assert html.escape(verdict["name"].replace("_", " ")) in text
        assert html.escape(verdict["summary"]) in text
        assert all(html.escape(fix) in text for fix in verdict["fixes"])
    assert html.escape((trained.run_dir / "config.toml").read_text()) in text
    assert all(f"<td>{layer['name']}</td>" in text for layer in result["doctor"]["layers"])


def test_the_history_is_rebuilt_from_result_json(trained):
    doctor = json.loads((trained.run_dir / "result.json").read_text())["doctor"]
    rebuilt, history = rebuild_history(doctor), trained.doctor.history
    assert (rebuilt.layers, rebuilt.kinds, rebuilt.steps) == (history.layers, history.kinds, history.steps)
    for stat in STATS:
        expected = history.series(stat) if stat in SERIES else np.full_like(history.series(stat), np.nan)
        np.testing.assert_allclose(rebuilt.series(stat), expected, rtol=1e-6, equal_nan=True)
    assert rebuilt.optimizer == history.optimizer and rebuilt.lr == pytest.approx(history.lr)
    assert rebuild_history({"history": None}) is None


def test_a_diverged_run_gets_its_error_and_verdicts_and_says_why_there_is_no_figure(copy_of_diverged):
    result = json.loads((copy_of_diverged / "result.json").read_text())
    text = write_report(copy_of_diverged).read_text()
    assert html.escape(result["error"]) in text and "non-finite" in text
    verdicts = result["doctor"]["verdicts"]
    assert "non_finite" in [v["name"] for v in verdicts]
    for verdict in verdicts:
        assert html.escape(verdict["summary"]) in text
        assert verdict["fixes"] and all(f"fix: {html.escape(fix)}" in text for fix in verdict["fixes"])
    assert "verdict problem" in text and "verdict healthy" not in text
    assert "no trained model (model.safetensors)" in text and "no finished epoch" in text
    assert sources(text) == []


def test_the_run_folders_text_is_escaped(copy_of_diverged):
    result_path = copy_of_diverged / "result.json"
    result = json.loads(result_path.read_text())
    result["error"] = "<script>alert('x')</script> & more"
    result["doctor"]["verdicts"][0]["fixes"] = ["use <b>less</b>"]
    result_path.write_text(json.dumps(result))
    text = write_report(copy_of_diverged).read_text()
    assert "<script>" not in text and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in text
    assert "<b>less</b>" not in text and "use &lt;b&gt;less&lt;/b&gt;" in text


def test_a_deep_models_layer_table_shows_evenly_spaced_layers():
    layers = [{"name": f"hidden{i}", "kind": "selu", "act_std": 1.0, "dead": 0.5} for i in range(1, 101)]
    text = layers_section({"layers": layers})
    assert text.count("<tr>") == MAX_LAYER_ROWS + 1  # the header
    assert "<td>hidden1</td>" in text and "<td>hidden100</td>" in text and "<td>hidden2</td>" not in text
    assert f"{MAX_LAYER_ROWS} of 100 layers, evenly spaced" in text and "50%" in text
    assert "evenly spaced" not in layers_section({"layers": layers[:3]})


def test_the_command_writes_the_page_and_prints_its_path(copy_of_diverged, tmp_path, capsys):
    target = tmp_path / "page.html"
    assert main(["report", str(copy_of_diverged), "--output", str(target)]) == 0
    assert capsys.readouterr().out.strip() == str(target)
    assert "non finite" in target.read_text() and not (copy_of_diverged / "report.html").exists()


def bad_inputs(run_dir, tmp_path):
    """(arguments, what the message names) of each mistake, made in `tmp_path`."""
    (tmp_path / "empty").mkdir()
    broken = shutil.copytree(run_dir, tmp_path / "broken")
    (broken / "result.json").write_text('{"stop_reason": "completed')  # cut off
    return {
        "a path that does not exist": ([str(tmp_path / "missing")], "is not a run folder"),
        "a folder that is no run folder": ([str(tmp_path / "empty")], "is not a run folder"),
        "a file given as the run folder": ([str(run_dir / "config.toml")], "is not a run folder"),
        "result.json that is not JSON": ([str(broken)], "result.json cannot be read as JSON"),
        "--output in a folder that is missing": (
            [str(run_dir), "--output", str(tmp_path / "nowhere" / "r.html")],
            "does not exist",
        ),
        "--output that is a folder": ([str(run_dir), "--output", str(tmp_path / "empty")], "is a folder"),
    }


@pytest.mark.parametrize(
    "mistake",
    [
        "a path that does not exist",
        "a folder that is no run folder",
        "a file given as the run folder",
        "result.json that is not JSON",
        "--output in a folder that is missing",
        "--output that is a folder",
    ],
)
def test_bad_input_exits_2_naming_the_path_and_writes_nothing(copy_of_diverged, tmp_path, capsys, mistake):
    args, message = bad_inputs(copy_of_diverged, tmp_path)[mistake]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["report", *args]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    named = args[-1] if "--output" in args else args[0]
    assert named in err or str(tmp_path / "broken" / "result.json") in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in a read-only folder")
def test_an_output_folder_without_write_permission_is_refused(copy_of_diverged, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    assert main(["report", str(copy_of_diverged), "--output", str(locked / "r.html")]) == 2
    assert f"no permission to write in {locked}" in capsys.readouterr().err
    assert not any(locked.iterdir())


def test_a_failed_write_leaves_the_existing_report_as_it_was(copy_of_diverged, monkeypatch):
    existing = copy_of_diverged / "report.html"
    existing.write_text("the earlier report")

    def disk_full(descriptor):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(GradwellError, match=rf"could not write the report {existing}: No space left"):
        write_report(copy_of_diverged)
    assert existing.read_text() == "the earlier report"
    assert sorted(p.name for p in copy_of_diverged.iterdir() if "report" in p.name) == ["report.html"]


@pytest.fixture
def chromium() -> str:
    """The headless browser, looked up before the page is built, so that its absence costs nothing."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("headless Chromium not installed: apt-get install chromium")
    return found


def test_the_page_renders_in_headless_chromium(chromium, page, tmp_path, trained):
    from PIL import Image

    path, _ = page
    browser = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2400",
    ]  # fmt: skip
    shot = tmp_path / "shot.png"
    done = subprocess.run([*browser, f"--screenshot={shot}", path.as_uri()], capture_output=True, timeout=60)
    assert done.returncode == 0 and shot.is_file(), done.stderr.decode(errors="replace")[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (2400, 1280, 3)
    colours = np.unique(pixels.reshape(-1, 3)[::7], axis=0)
    assert len(colours) > 200 and pixels.std() > 10  # text, tables and figures, not a blank page
    dom = subprocess.run([*browser, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=60)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for verdict in trained.doctor.to_dict()["verdicts"]:
        assert html.escape(verdict["summary"], quote=False) in dom.stdout
    assert "Stability doctor" in dom.stdout and "Learning curves" in dom.stdout
