"""Fixtures for the knowledge-graph validation tests: small thesauri built in memory."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from conch.validate import KnowledgeGraphValidator, Thesaurus

DATA = Path(__file__).parent / "data"


def make_thesaurus(
    terms: Mapping[str, str], edges: list[tuple[str, str]] | None = None
) -> Thesaurus:
    """``terms``: surface term -> concept. ``edges``: the role graph (None: no graph)."""
    concepts = {concept: index for index, concept in enumerate(sorted(set(terms.values())), 1)}
    document: dict = {
        "name": "test",
        "data": {t: {"id": concepts[c], "nterm": c, "url": None} for t, c in terms.items()},
    }
    if edges is not None:
        document["role_graph"] = {"edges": [list(edge) for edge in edges]}
    return Thesaurus.from_json(document)


@pytest.fixture
def thesaurus_of() -> Callable[..., Thesaurus]:
    """Builds a thesaurus from ``{surface term: concept}`` and optional role-graph edges."""
    return make_thesaurus


@pytest.fixture
def kg_dir() -> Path:
    return DATA / "kg"


@pytest.fixture
def devops() -> Thesaurus:
    """git and docker are related; kubernetes stands alone."""
    return make_thesaurus(
        {
            "git": "git",
            "git push": "git-push",
            "commit": "git",
            "docker": "docker",
            "container": "docker",
            "kubectl": "kubernetes",
            "pandas": "pandas",
            "read_csv": "pandas",
            "dataframe": "pandas",
        },
        edges=[("git", "git-push"), ("git", "docker"), ("pandas", "docker")],
    )


@pytest.fixture
def validator_for(devops: Thesaurus) -> Callable[..., KnowledgeGraphValidator]:
    def build(strictness: str = "normal", **options) -> KnowledgeGraphValidator:
        return KnowledgeGraphValidator(devops, strictness, **options)

    return build
