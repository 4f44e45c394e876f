"""What the docs tell a user to type must exist."""

from tests.conftest import ROOT


def test_no_command_that_current_huggingface_hub_no_longer_installs():
    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "recipes").glob("*.yaml")]:
        assert "huggingface-cli" not in path.read_text(encoding="utf-8"), f"{path}: use `hf auth login`"
