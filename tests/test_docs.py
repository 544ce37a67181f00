"""docs/: the API reference matches the docstrings, links resolve, code compiles."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import trio_lavin
import trio_lavin.prometheus
import trio_lavin.testing
from trio_lavin.testing import machines, strategies

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

GUIDE = [
    "connecting.md",
    "producing.md",
    "consuming.md",
    "streams.md",
    "workers.md",
    "concurrency.md",
    "rpc.md",
    "reliability.md",
    "testing.md",
    "tuning.md",
    "clusters.md",
    "brokers.md",
    "dead-lettering.md",
    "priorities-and-limits.md",
    "shutdown.md",
    "api.md",
]


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_api", DOCS / "gen_api.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def test_api_reference_is_generated_from_the_current_docstrings() -> None:
    rendered = load_generator().render()
    assert (DOCS / "api.md").read_text() == rendered, (
        "docs/api.md is out of date: run `python docs/gen_api.py`"
    )


def test_api_reference_documents_every_public_name() -> None:
    text = (DOCS / "api.md").read_text()
    headings = set(re.findall(r"^### `([^`]+)`$", text, flags=re.MULTILINE))
    public = set(trio_lavin.__all__) - {"__version__"}
    public |= {f"testing.{name}" for name in trio_lavin.testing.__all__}
    public |= {f"testing.strategies.{name}" for name in strategies.__all__}
    public |= {f"testing.machines.{name}" for name in machines.__all__}
    public |= {f"prometheus.{name}" for name in trio_lavin.prometheus.__all__}
    assert sorted(public - headings) == []
    assert sorted(headings - public) == []


def test_api_reference_shows_no_memory_addresses() -> None:
    assert re.findall(r"at 0x[0-9a-f]+", (DOCS / "api.md").read_text()) == []


def test_markdown_rendering_of_docstring_sections_and_roles() -> None:
    gen = load_generator()
    doc = (
        "Do it with :meth:`Client.consume` and :class:`~trio_lavin._x.Thing`::\n"
        "\n"
        "    await x()\n"
        "\n"
        "Raises:\n"
        "    ValueError: a bad\n"
        "        value.\n"
        "    trio.WouldBlock: full.\n"
    )
    assert gen.markdown(doc) == (
        "Do it with `Client.consume` and `Thing`:\n"
        "\n"
        "```python\n"
        "await x()\n"
        "```\n"
        "\n"
        "\n"
        "**Raises:**\n"
        "\n"
        "- ValueError: a bad value.\n"
        "- trio.WouldBlock: full.\n"
    )


def test_the_index_links_every_guide_page() -> None:
    index = (DOCS / "index.md").read_text()
    linked = set(re.findall(r"\]\(([a-z_-]+\.md)", index))
    assert sorted(set(GUIDE) - linked) == []
    pages = {page.name for page in DOCS.glob("*.md")} - {"index.md"}
    assert sorted(pages - set(GUIDE)) == [], "a page the guide list does not name"


def test_every_relative_link_in_the_docs_resolves() -> None:
    broken = []
    for page in pages():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.name} -> {target}")
    assert broken == []


def test_every_python_block_in_the_guide_compiles() -> None:
    for page in pages():
        if page.name == "api.md":
            continue  # signatures, not code
        blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL)
        for number, block in enumerate(blocks, 1):
            # Snippets may use await / async with at top level, as inside a function.
            source = "async def _snippet():\n" + "".join(
                f"    {line}\n" for line in block.splitlines()
            )
            try:
                compile(source, f"{page.name} block {number}", "exec")
            except SyntaxError as exc:  # pragma: no cover - the assertion reports it
                raise AssertionError(f"{page.name}, python block {number}: {exc}") from exc


#: An import of this repository's tests, which a user's checkout does not have.
IMPORTS_TESTS = re.compile(
    r"^\s*(from|import)\s+tests(\.|\s|$)|-m\s+tests\.|\"-m\", \"tests\.", re.MULTILINE
)


def test_examples_docs_benchmarks_and_nox_sessions_use_only_the_public_package() -> None:
    files = [
        *sorted((ROOT / "examples").glob("*.py")),
        *pages(),
        *sorted((ROOT / "benchmarks").glob("*.py")),
        ROOT / "benchmarks" / "README.md",
        ROOT / "README.md",
        ROOT / "noxfile.py",
    ]
    assert [path.name for path in files if IMPORTS_TESTS.search(path.read_text())] == []
    assert IMPORTS_TESTS.search("from tests._broker import RabbitNode")  # it would see one
    assert IMPORTS_TESTS.search('session.run("python", "-m", "tests._broker", "exec")')


def test_tuning_lists_every_config_field() -> None:
    import dataclasses

    text = (DOCS / "tuning.md").read_text()
    fields = [field.name for field in dataclasses.fields(trio_lavin.Config)]
    assert [name for name in fields if f"| `{name}` |" not in text] == []


#: A code span (`x` in markdown, ``x`` in a docstring), on one line or across lines.
CODE_SPAN = re.compile(r"(`{1,2})([^`]+?)\1")


def nursery_starts_with_keywords(text: str) -> list[str]:
    """The code spans and blocks of ``text`` that pass keywords to
    ``nursery.start``/``start_soon`` (which take none: a TypeError)."""
    found = []
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    spans = [span for _, span in CODE_SPAN.findall(prose)]
    for code in [*blocks, *(" ".join(span.split()) for span in spans)]:
        if "nursery.start" not in code:
            continue
        try:
            tree = ast.parse(
                "async def _():\n" + "".join(f"    {line}\n" for line in code.splitlines())
            )
        except SyntaxError:
            found.append(f"does not parse: {code}")
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("start", "start_soon")
                and node.keywords
            ):
                found.append(ast.unparse(node))
    return found


def test_no_doc_passes_keywords_to_nursery_start() -> None:
    """``nursery.start(client.serve, q, h, concurrency=20)`` raises TypeError: the
    docs and docstrings pass keywords with functools.partial."""
    files = [ROOT / "README.md", *pages(), *sorted((ROOT / "trio_lavin").rglob("*.py"))]
    found = {
        path.name: bad for path in files if (bad := nursery_starts_with_keywords(path.read_text()))
    }
    assert found == {}
    assert nursery_starts_with_keywords("`await nursery.start(f, x,\n  y=1)`")  # it would see one


def test_every_other_fenced_block_is_a_url_the_client_parses() -> None:
    """Python blocks are compiled (above) and run (tests/integration/test_doc_blocks.py),
    sh blocks run (tests/integration/test_doc_commands.py), text blocks are output; a
    block with no language is a URL, and must parse."""
    others = []
    for page in pages():
        if page.name == "api.md":
            continue  # signatures
        for language, body in re.findall(r"^```(\w*)\n(.*?)^```", page.read_text(), re.M | re.S):
            assert language in ("python", "sh", "text", ""), f"{page.name}: ```{language}"
            if language == "":
                others.append(body.strip())
    assert len(others) >= 3
    for url in others:
        assert trio_lavin.parse_url(url).host, url
