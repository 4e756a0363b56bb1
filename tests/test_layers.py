"""The import graph has one direction: repos/ ← agents/ ← bot/ ← handlers/ ← app.py.

`repos/` (git, worktrees, the sandbox, running programs, verification) imports none of
Fixbot's other packages, `agents/` only `repos/`, and `bot/` never the entry script. Read
from the source, every import statement wherever it stands, so a lazy import inside a
function cannot hide a wrong direction.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imports_of(package: str) -> dict[str, set[str]]:
    """Each module of `package` (by path) and the top-level packages it imports."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.partition(".")[0])
        found[path.relative_to(ROOT).as_posix()] = names
    return found


def wrong_imports(package: str, forbidden: set[str]) -> dict[str, list[str]]:
    return {
        module: sorted(names & forbidden)
        for module, names in imports_of(package).items()
        if names & forbidden
    }


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("repos", {"agents", "bot", "handlers", "storage", "app"}),
        ("agents", {"bot", "handlers", "storage", "app"}),
        ("storage", {"agents", "bot", "handlers", "app"}),
    ],
)
def test_a_lower_package_imports_nothing_above_it(package: str, forbidden: set[str]) -> None:
    assert imports_of(package), f"{package}/ has no modules: the test reads the wrong place"
    assert wrong_imports(package, forbidden) == {}


def test_bot_does_not_import_the_entry_script() -> None:
    assert wrong_imports("bot", {"app"}) == {}


def test_views_render_plain_data_not_orm_rows() -> None:
    assert "storage" not in imports_of("bot")["bot/views.py"]
