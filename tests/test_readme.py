"""The README stays true: its examples run, and CI runs its test command."""

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_python_example_in_the_readme_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 8
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text()
    assert any(c.endswith("gradwell train") for c in commands)


def test_the_public_api_is_importable_from_the_package():
    import gradwell

    missing = [name for name in gradwell.__all__ if not hasattr(gradwell, name)]
    assert not missing
    assert gradwell.fit is gradwell.train.fit and gradwell.mlp(4, 2, hidden=[3])[-1].out_features == 2


def reliability_rows() -> list[tuple[str, str]]:
    """(command, message) of each row of the README's table of mistakes."""
    section = README.split("### Reliability: what a mistake looks like")[1].split("\n\n")[2]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "`gradwell " in line]
    return [tuple(re.findall(r"`([^`]*)`", row)[:2]) for row in rows]


def test_the_reliability_table_has_its_rows():
    assert len(reliability_rows()) >= 15


@pytest.mark.parametrize(("command", "message"), reliability_rows(), ids=lambda v: v[:40])
def test_every_mistake_in_the_readme_gets_the_error_it_shows(tmp_path, monkeypatch, capsys, command, message):
    from gradwell.cli import main

    monkeypatch.chdir(tmp_path)
    args = shlex.split(command)[1:]
    assert main(args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing written
