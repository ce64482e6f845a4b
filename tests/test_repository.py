"""The repository keeps what the commands write out of version control."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_default_outputs_of_the_commands_are_ignored():
    ignored = {line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()}
    assert {"runs/", "demo-output/"} <= ignored  # vlgen train, train-classifier and vlgen demo write there
