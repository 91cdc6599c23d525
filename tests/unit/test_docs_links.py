"""The README and docs link only to files inside the repository (a user's clone has nothing else)."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "helm" / "mixprec" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_link_points_at_a_file_in_the_repository():
    assert (ROOT / "docs" / "architecture.md") in DOCS
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            path = (doc.parent / target.split("#", 1)[0]).resolve()
            assert "://" not in target and path.is_relative_to(ROOT) and path.exists(), f"{doc.name} links {target}"


def test_the_readme_points_at_the_architecture_in_the_repository():
    readme = (ROOT / "README.md").read_text()
    assert "](docs/architecture.md)" in readme
    assert "## Deploying on Kubernetes" in readme
