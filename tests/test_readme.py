"""The README stays true: its examples run, and CI runs its test command."""

import re
from pathlib import Path

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
