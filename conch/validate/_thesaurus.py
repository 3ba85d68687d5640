"""The domain vocabulary: surface terms, the concepts they name, and the concepts' relations.

Two sources, one format:

- Terraphim thesaurus JSON: ``{"name": ..., "data": {"<surface term>": {"id": N,
  "nterm": "<concept>", "url": ...}}}``. conch adds an optional ``"role_graph": {"edges":
  [["<concept>", "<concept>"], ...]}``; readers that do not know it ignore it.
- A directory of Markdown files, one concept per file (the file name, lower-cased, as
  Terraphim does), with ``synonyms:: a, b, c`` lines. Two concepts are related when terms of
  both appear in one paragraph, or when a file links to another (``[[other]]`` or
  ``[text](other.md)``). ``Thesaurus.from_markdown`` builds both the terms and the graph.

A thesaurus without ``role_graph`` has no graph (``role_graph is None``): connectivity is then
not checked, rather than every pair of concepts being called unrelated.

A key given twice in one JSON object must carry the same value both times (for a surface term
of ``data``: the same concept), and then the last one is kept; otherwise the file is refused,
naming the key and where it is.
"""

from __future__ import annotations

import itertools
import json
import re
import unicodedata
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conch.errors import ValidationConfigError
from conch.validate._tokens import normalize


class ThesaurusError(ValidationConfigError):
    """A thesaurus file or directory cannot be used as it is."""


@dataclass(frozen=True, slots=True)
class Concept:
    id: int
    name: str
    """The normalised term (Terraphim's ``nterm``)."""
    url: str | None = None


class RoleGraph:
    """Undirected relations between concepts, with their connected components precomputed."""

    def __init__(self, edges: Iterable[tuple[str, str]] = ()) -> None:
        self._edges: set[tuple[str, str]] = set()
        parent: dict[str, str] = {}

        def root(node: str) -> str:
            parent.setdefault(node, node)
            while parent[node] != node:
                parent[node] = parent[parent[node]]
                node = parent[node]
            return node

        for a, b in edges:
            if a == b:
                continue
            self._edges.add((a, b) if a < b else (b, a))
            parent[root(a)] = root(b)
        self._component = {node: root(node) for node in parent}

    @property
    def edges(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(self._edges))

    def related(self, a: str, b: str) -> bool:
        return (a, b) in self._edges or (b, a) in self._edges

    def connected(self, concepts: Iterable[str]) -> bool:
        """True when a path links every one of ``concepts`` (vacuously for zero or one)."""
        components = {self._component.get(concept, f"\0{concept}") for concept in set(concepts)}
        return len(components) <= 1

    def __len__(self) -> int:
        return len(self._edges)


@dataclass(frozen=True)
class Thesaurus:
    name: str
    terms: Mapping[str, Concept]
    """Surface term, as written in the source, to its concept."""
    role_graph: RoleGraph | None = None
    source: str = "<memory>"
    concepts: Mapping[str, Concept] = field(init=False)

    def __post_init__(self) -> None:
        by_name = {concept.name: concept for concept in self.terms.values()}
        object.__setattr__(self, "concepts", by_name)
        folded: dict[str, str] = {}
        for term, concept in self.terms.items():
            key = normalize(term.strip()).text
            if not key:
                raise ThesaurusError(f"{self.source}: empty surface term for {concept.name!r}")
            first = folded.setdefault(key, term)
            if self.terms[first].name != concept.name:
                raise ThesaurusError(
                    f"{self.source}: surface terms {first!r} and {term!r} differ only in "
                    f"{_how_they_differ(first, term)} but map to different concepts "
                    f"({self.terms[first].name!r} and {concept.name!r}); map them to one "
                    "concept or remove one"
                )
        if self.role_graph is not None:
            for a, b in self.role_graph.edges:
                for end in (a, b):
                    if end not in by_name:
                        raise ThesaurusError(
                            f"{self.source}: role graph edge ({a!r}, {b!r}) names concept "
                            f"{end!r}, which no term maps to; add a term for it or drop the edge"
                        )

    # --- Terraphim JSON ------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> Thesaurus:
        """Read a thesaurus JSON file (Terraphim format, optionally with a role graph)."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise ThesaurusError(
                f"thesaurus file {path} does not exist; build one with "
                f"`conch kg build DIR -o {path}`"
            ) from None
        except OSError as error:
            raise ThesaurusError(f"cannot read thesaurus file {path}: {error.strerror}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ThesaurusError(
                f"thesaurus file {path} is not UTF-8 text (binary file?)"
            ) from None
        repeats = _RepeatedKeys()
        try:
            data = json.loads(text, object_pairs_hook=repeats)
        except json.JSONDecodeError as error:
            raise ThesaurusError(
                f"thesaurus file {path} is not valid JSON (line {error.lineno}, column "
                f"{error.colno}: {error.msg})"
            ) from None
        except RecursionError:
            raise ThesaurusError(
                f"thesaurus file {path} nests JSON arrays or objects too deeply to read (a "
                "thesaurus needs four levels at most)"
            ) from None
        if repeats.found:
            _check_repeated_keys(data, path)
        return cls.from_json(data, source=str(path))

    @classmethod
    def from_json(cls, data: Any, *, source: str = "<memory>") -> Thesaurus:
        if not isinstance(data, dict) or not isinstance(data.get("data"), dict):
            raise ThesaurusError(
                f'{source}: expected a JSON object {{"name": ..., "data": {{"<term>": '
                f'{{"id": N, "nterm": "<concept>"}}}}}}'
            )
        terms: dict[str, Concept] = {}
        for term, entry in data["data"].items():
            if not isinstance(entry, dict) or not isinstance(entry.get("nterm"), str):
                raise ThesaurusError(
                    f'{source}: term {term!r} needs an object with a string "nterm" (its concept)'
                )
            concept_id = entry.get("id", 0)
            if not isinstance(concept_id, int) or isinstance(concept_id, bool):
                raise ThesaurusError(f'{source}: term {term!r} has a non-integer "id"')
            url = entry.get("url")
            terms[term] = Concept(concept_id, entry["nterm"], url if isinstance(url, str) else None)
        graph = None
        if "role_graph" in data:
            edges = (
                data["role_graph"].get("edges") if isinstance(data["role_graph"], dict) else None
            )
            if not isinstance(edges, list) or not all(
                isinstance(e, list) and len(e) == 2 and all(isinstance(c, str) for c in e)
                for e in edges
            ):
                raise ThesaurusError(
                    f'{source}: "role_graph" must be {{"edges": [["<concept>", "<concept>"], ...]}}'
                )
            graph = RoleGraph((a, b) for a, b in edges)
        name = data.get("name")
        return cls(
            name if isinstance(name, str) else Path(source).stem,
            terms,
            graph,
            source=source,
        )

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "name": self.name,
            "data": {
                term: {"id": concept.id, "nterm": concept.name, "url": concept.url}
                for term, concept in sorted(self.terms.items())
            },
        }
        if self.role_graph is not None:
            document["role_graph"] = {"edges": [list(edge) for edge in self.role_graph.edges]}
        return document

    def save(self, path: str | Path) -> None:
        Path(path).write_text(
            json.dumps(self.to_json(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )

    # --- Markdown directory ----------------------------------------------------------------

    @classmethod
    def from_markdown(cls, directory: str | Path, *, name: str | None = None) -> Thesaurus:
        """Build terms and role graph from ``*.md`` files under ``directory`` (recursively)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise ThesaurusError(f"{directory} is not a directory of Markdown files")
        files = sorted(directory.rglob("*.md"))
        if not files:
            raise ThesaurusError(f"{directory} holds no *.md files (one file per concept)")
        pages: list[_Page] = [_Page.read(file) for file in files]
        concept_names = sorted({page.concept for page in pages})
        concepts = {name: Concept(index, name) for index, name in enumerate(concept_names, start=1)}
        terms: dict[str, Concept] = {}
        first_seen: dict[str, tuple[str, _Page]] = {}  # folded term -> (concept, its page)
        for page in pages:
            for term in page.terms:
                concept, first_page = first_seen.setdefault(
                    normalize(term).text, (page.concept, page)
                )
                if concept != page.concept:
                    raise ThesaurusError(
                        f"term {term!r} is a synonym in both {first_page.path} and {page.path}, "
                        "which are different concepts; keep it in one file"
                    )
                if first_page is page:
                    terms.setdefault(term, concepts[page.concept])
        # Imported here: the matcher module imports nothing from this one, but building the
        # graph needs a matcher over the terms just collected.
        from conch.validate._matcher import TermMatcher

        matcher = TermMatcher((term, concept.name) for term, concept in terms.items())
        edges: list[tuple[str, str]] = []
        for page in pages:
            for target in page.links:
                if target in concepts and target != page.concept:
                    edges.append((page.concept, target))
            for paragraph in page.paragraphs:
                found = sorted({match.concept for match in matcher.find(paragraph)})
                edges.extend(itertools.combinations(found, 2))
        return cls(
            name or directory.name,
            terms,
            RoleGraph(edges),
            source=str(directory),
        )


_SYNONYMS = re.compile(r"^\s*(?:[-*]\s+)?synonyms::(.*)$", re.IGNORECASE | re.MULTILINE)
_PROPERTY_LINE = re.compile(r"^\s*(?:[-*]\s+)?[\w-]+::.*$", re.MULTILINE)
_WIKI_LINK = re.compile(r"\[\[([^\]|#]+)(?:[#|][^\]]*)?\]\]")
_MD_LINK = re.compile(r"\]\(([^)\s]+?\.md)(?:#[^)]*)?\)")
_BLANK_LINE = re.compile(r"\n\s*\n")


@dataclass(frozen=True, slots=True)
class _Page:
    path: Path
    concept: str
    terms: tuple[str, ...]
    links: tuple[str, ...]
    paragraphs: tuple[str, ...]

    @classmethod
    def read(cls, path: Path) -> _Page:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ThesaurusError(f"{path} is not UTF-8 text") from None
        concept = path.stem.strip().lower()
        terms = [path.stem.strip()]
        for line in _SYNONYMS.findall(text):
            terms.extend(s.strip() for s in line.split(",") if s.strip())
        links = [m.strip().lower() for m in _WIKI_LINK.findall(text)]
        links += [Path(m).stem.lower() for m in _MD_LINK.findall(text)]
        body = _PROPERTY_LINE.sub("", text)
        paragraphs = tuple(p for p in _BLANK_LINE.split(body) if p.strip())
        return cls(path, concept, tuple(dict.fromkeys(terms)), tuple(links), paragraphs)


def _how_they_differ(first: str, second: str) -> str:
    """What sets apart two surface terms that normalise alike (whitespace, case, Unicode)."""
    a, b = first.strip(), second.strip()
    ways = []
    if a != b:
        if a.casefold() == b.casefold():
            ways.append("case")
        elif unicodedata.normalize("NFC", a) == unicodedata.normalize("NFC", b):
            ways.append("Unicode normalisation (composed or decomposed accents)")
        else:
            ways.append("case and Unicode normalisation")
    if _around(first) != _around(second):
        ways.append("surrounding whitespace")
    return " and ".join(ways)


def _around(term: str) -> tuple[str, str]:
    """The whitespace before and after ``term``."""
    start, end = len(term) - len(term.lstrip()), len(term.rstrip())
    return term[:start], term[max(start, end) :]


class _JSONObject(dict[str, Any]):
    """A parsed JSON object, with the keys it was given twice with different values."""

    repeated: tuple[tuple[str, Any, Any], ...] = ()


class _RepeatedKeys:
    """JSON object hook: keeps the last value of a repeated key, and notes the repeat when
    the values differ (``found``), for ``_check_repeated_keys`` to judge once the position
    of every object is known."""

    def __init__(self) -> None:
        self.found = False

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = _JSONObject()
        repeated = []
        for key, value in pairs:
            if key in result and result[key] != value:
                repeated.append((key, result[key], value))
            result[key] = value
        if repeated:
            result.repeated = tuple(repeated)
            self.found = True
        return result


def _check_repeated_keys(document: Any, path: Path) -> None:
    """Refuse a key given twice with different values (see the module docstring)."""
    pending: deque[tuple[tuple[str | int, ...], Any]] = deque([((), document)])
    while pending:  # breadth first: the outermost conflict is reported
        where, value = pending.popleft()
        if isinstance(value, list):
            pending.extend(((*where, index), item) for index, item in enumerate(value))
            continue
        if not isinstance(value, dict):
            continue
        for key, first, second in getattr(value, "repeated", ()):
            if where == ("data",):  # surface terms: the same concept is the same entry
                if _concept_of(first) != _concept_of(second):
                    raise ThesaurusError(
                        f"thesaurus file {path}: surface term {key!r} appears twice mapped to "
                        f"different concepts ({json.dumps(first)} and {json.dumps(second)}); "
                        "keep one"
                    )
                continue
            raise ThesaurusError(
                f"thesaurus file {path}: key {key!r} appears twice {_position(where)} with "
                f"different values ({json.dumps(first)} and {json.dumps(second)}); keep one"
            )
        pending.extend(((*where, key), item) for key, item in value.items())


def _position(where: tuple[str | int, ...]) -> str:
    if not where:
        return "at the top level"
    if len(where) == 2 and where[0] == "data":
        return f"in the entry of surface term {where[1]!r}"
    return "in " + "".join(f"[{json.dumps(step, ensure_ascii=False)}]" for step in where)


def _concept_of(value: Any) -> Any:
    """What a repeated term must agree on: its concept for a term entry, else the value."""
    return value.get("nterm", value) if isinstance(value, dict) else value
