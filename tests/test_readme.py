"""The README's two set-up commands are what CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block and text.index(block.group(0)) < 20, "README must start with the set-up commands"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_starts_with_two_setup_commands():
    quickstart, tests = _setup_commands()
    assert "examples/quickstart.py" in quickstart
    assert "pytest" in tests


def test_ci_runs_the_readme_commands_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in _setup_commands():
        assert command in ci, f"{command!r} is not in .ci/run"


def test_changelog_follows_keep_a_changelog():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog") and "## [Unreleased]" in text and "keepachangelog.com" in text


def test_readme_usage_example_runs(tmp_path, monkeypatch):
    """The README's Python example, executed as written (offline preset, generated parts)."""
    text = (ROOT / "README.md").read_text()
    code = re.search(r"## Usage\s+```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert result.is_anomalous and result.score > result.threshold  # a crack on a puck
    assert (tmp_path / "crack.png").is_file()
    assert (tmp_path / "my-detector" / "model.safetensors").is_file()
