"""Where the repository's own folders are: the one place that computes them.

The package is installed editable (``pip install -e .``, done by ``scripts/setup.sh``), so the
repository root is this file's grandparent; result folders, the built-in scenarios and the
shared Mooncake traces are found from it.
"""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The checkout: git provenance is read here."""
RESULTS_DIR = REPO_ROOT / "results"
"""Default parent of result folders (``results/<timestamp>-<backend>-<scenario>``)."""
SCENARIOS_DIR = REPO_ROOT / "scenarios"
"""The built-in scenario TOML files."""
DOCS_DIR = REPO_ROOT / "docs"
"""Where ``netkv report`` writes results.md and its figures by default."""
MOONCAKE_DIR = REPO_ROOT.parent / "shared" / "data" / "mooncake"
"""The Mooncake traces beside the checkout (read in place, never copied into the repository)."""
