"""Loading thesauri (Terraphim JSON, Markdown directories) and the role graph."""

from __future__ import annotations

import json

import pytest

from conch.validate import RoleGraph, Thesaurus, ThesaurusError


def write(path, content: str | bytes):
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def test_loads_the_terraphim_format(tmp_path):
    path = write(
        tmp_path / "t.json",
        json.dumps(
            {
                "name": "devops",
                "data": {
                    "kubectl": {"id": 1, "nterm": "kubernetes", "url": "https://k8s.io"},
                    "k8s": {"id": 1, "nterm": "kubernetes", "url": None},
                },
            }
        ),
    )
    thesaurus = Thesaurus.load(path)
    assert thesaurus.name == "devops"
    assert thesaurus.terms["kubectl"].name == "kubernetes"
    assert thesaurus.terms["kubectl"].url == "https://k8s.io"
    assert set(thesaurus.concepts) == {"kubernetes"}
    assert thesaurus.role_graph is None  # no graph stored: connectivity is not checked


def test_saved_thesaurus_loads_back_with_its_role_graph(kg_dir, tmp_path):
    built = Thesaurus.from_markdown(kg_dir)
    built.save(tmp_path / "kg.json")
    loaded = Thesaurus.load(tmp_path / "kg.json")
    assert loaded.terms == built.terms
    assert loaded.role_graph is not None and built.role_graph is not None
    assert loaded.role_graph.edges == built.role_graph.edges


@pytest.mark.parametrize(
    ("content", "expected_words"),
    [
        (None, ["does not exist", "conch kg build"]),
        ("{not json", ["not valid JSON", "line 1"]),
        (b"\xff\xfe\x00binary", ["not UTF-8"]),
        ('["a list"]', ["expected a JSON object"]),
        ('{"name": "x", "data": {"git": "git"}}', ["'git'", "nterm"]),
        (
            '{"name": "x", "data": {"git": {"id": 1, "nterm": "git"}, '
            '"git": {"id": 2, "nterm": "gitlab"}}}',
            ["'git'", "appears twice", "gitlab"],
        ),
        (
            '{"name": "x", "data": {"Git": {"id": 1, "nterm": "git"}, '
            '"GIT": {"id": 2, "nterm": "gitlab"}}}',
            ["'Git'", "'GIT'", "different concepts"],
        ),
        (
            '{"name": "x", "data": {"git": {"id": 1, "nterm": "git"}}, '
            '"role_graph": {"edges": [["git", "svn"]]}}',
            ["'svn'", "no term maps to"],
        ),
    ],
    ids=[
        "missing",
        "not-json",
        "binary",
        "not-object",
        "bad-entry",
        "duplicate",
        "case-clash",
        "bad-edge",
    ],
)
def test_bad_thesaurus_files_name_the_file_and_the_problem(tmp_path, content, expected_words):
    path = tmp_path / "thesaurus.json"
    if content is not None:
        write(path, content)
    with pytest.raises(ThesaurusError) as error:
        Thesaurus.load(path)
    assert str(path) in str(error.value)
    for word in expected_words:
        assert word in str(error.value)


ENTRY = '{"id": 1, "nterm": "git"}'


@pytest.mark.parametrize(
    ("content", "expected_words"),
    [
        (
            f'{{"name": "x", "name": "y", "data": {{"git": {ENTRY}}}}}',
            ["key 'name' appears twice at the top level", '"x" and "y"'],
        ),
        (
            '{"name": "x", "data": {"git": {"id": 1, "nterm": "git", "url": "a", "url": "b"}}}',
            ["key 'url' appears twice in the entry of surface term 'git'", '"a" and "b"'],
        ),
        (
            '{"name": "x", "data": {"git": {"id": 1, "nterm": "git", "nterm": "svn"}}}',
            ["key 'nterm' appears twice in the entry of surface term 'git'"],
        ),
        (
            f'{{"name": "x", "data": {{"git": {ENTRY}}}, '
            '"role_graph": {"edges": [], "edges": [["git", "git"]]}}',
            ["key 'edges' appears twice in [\"role_graph\"]"],
        ),
    ],
    ids=["top-level", "in-an-entry", "concept-in-an-entry", "in-the-role-graph"],
)
def test_a_key_repeated_with_another_value_is_named_with_where_it_is(
    tmp_path, content, expected_words
):
    path = write(tmp_path / "t.json", content)
    with pytest.raises(ThesaurusError) as error:
        Thesaurus.load(path)
    message = str(error.value)
    assert str(path) in message
    assert "surface term 'url'" not in message and "different concepts" not in message
    for words in expected_words:
        assert words in message


@pytest.mark.parametrize(
    "content",
    [
        f'{{"name": "x", "name": "x", "data": {{"git": {ENTRY}}}}}',
        '{"name": "x", "data": {"git": {"id": 1, "nterm": "git", "url": "a", "url": "a"}}}',
    ],
    ids=["top-level", "in-an-entry"],
)
def test_a_key_repeated_with_the_same_value_is_fine(tmp_path, content):
    thesaurus = Thesaurus.load(write(tmp_path / "t.json", content))
    assert thesaurus.name == "x"
    assert thesaurus.terms["git"].name == "git"


@pytest.mark.parametrize(
    ("first", "second", "difference"),
    [
        (" git ", "git", "differ only in surrounding whitespace"),
        ("Git", "GIT", "differ only in case"),
        ("Git", "git ", "differ only in case and surrounding whitespace"),
        ("caf\u00e9", "cafe\u0301", "differ only in Unicode normalisation"),
    ],
)
def test_terms_that_normalise_alike_are_reported_with_what_differs(
    tmp_path, first, second, difference
):
    content = (
        f'{{"name": "x", "data": {{"{first}": {{"id": 1, "nterm": "git"}}, '
        f'"{second}": {{"id": 2, "nterm": "gitlab"}}}}}}'
    )
    with pytest.raises(ThesaurusError) as error:
        Thesaurus.load(write(tmp_path / "t.json", content))
    assert difference in str(error.value)
    assert "'git' and 'gitlab'" in str(error.value)
    if "case" not in difference:
        assert "case" not in str(error.value)


@pytest.mark.parametrize("opening", ["[", '{"a": '])
def test_json_nested_too_deeply_is_refused_naming_the_file(tmp_path, opening):
    closing = "]" if opening == "[" else "}"
    path = write(tmp_path / "deep.json", opening * 100_000 + "1" + closing * 100_000)
    with pytest.raises(ThesaurusError, match="too deeply") as error:
        Thesaurus.load(path)
    assert str(path) in str(error.value)


def test_a_term_repeated_with_the_same_concept_is_fine(tmp_path):
    path = write(
        tmp_path / "t.json",
        '{"name": "x", "data": {"git": {"id": 1, "nterm": "git"}, '
        '"git": {"id": 1, "nterm": "git"}}}',
    )
    assert list(Thesaurus.load(path).terms) == ["git"]


def test_markdown_directory_gives_concepts_from_file_names_and_synonyms(kg_dir):
    thesaurus = Thesaurus.from_markdown(kg_dir)
    assert set(thesaurus.concepts) == {"git", "push", "kubernetes", "docker", "pandas"}
    assert thesaurus.terms["kubectl"].name == "kubernetes"
    assert thesaurus.terms["docker compose"].name == "docker"  # "- synonyms::" bullet form
    assert thesaurus.terms["git push"].name == "push"


def test_role_graph_links_files_that_link_and_concepts_sharing_a_paragraph(tmp_path):
    write(tmp_path / "alpha.md", "synonyms:: a1\n\nSee [[beta]].\n")
    write(tmp_path / "beta.md", "Nothing here.\n")
    write(tmp_path / "gamma.md", "synonyms:: g1\n\nWorks with delta.\n\nUnrelated: alpha.\n")
    write(tmp_path / "delta.md", "Plain.\n")
    write(tmp_path / "epsilon.md", "See [the docs](alpha.md).\n")
    graph = Thesaurus.from_markdown(tmp_path).role_graph
    assert graph is not None
    assert graph.related("alpha", "beta")  # wiki link
    assert graph.related("epsilon", "alpha")  # Markdown link
    assert graph.related("gamma", "delta") is False  # gamma's own name is not in its text
    assert graph.connected(["alpha", "beta", "epsilon"])
    assert not graph.connected(["alpha", "delta"])


def test_paragraph_co_occurrence_relates_the_concepts_mentioned(tmp_path):
    write(tmp_path / "notes.md", "git and docker here.\n\nkubectl alone.\n")
    for name in ("git", "docker", "kubectl"):
        write(tmp_path / f"{name}.md", "")
    graph = Thesaurus.from_markdown(tmp_path).role_graph
    assert graph is not None
    assert graph.related("git", "docker")
    assert not graph.related("git", "kubectl")


def test_a_synonym_claimed_by_two_concepts_names_both_files(tmp_path):
    write(tmp_path / "first.md", "synonyms:: shared\n")
    write(tmp_path / "second.md", "synonyms:: Shared\n")
    with pytest.raises(ThesaurusError, match=r"first\.md.*second\.md"):
        Thesaurus.from_markdown(tmp_path)


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p], ids=["missing", "empty"])
def test_markdown_source_must_be_a_directory_with_markdown(tmp_path, make):
    with pytest.raises(ThesaurusError):
        Thesaurus.from_markdown(make(tmp_path))


def test_role_graph_connectivity():
    graph = RoleGraph([("a", "b"), ("b", "c"), ("x", "y")])
    assert graph.connected(["a", "c"])
    assert not graph.connected(["a", "x"])
    assert graph.connected(["a"])  # one concept is trivially connected
    assert not graph.connected(["a", "not-in-graph"])
