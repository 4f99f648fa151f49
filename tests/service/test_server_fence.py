"""service/server/ stands below the app: it imports nothing from the rest of ``service``.

The app hands it what it needs when it builds its runner (service/app.py's ``app_runner``): the
issuing route, the answer to aiohttp's own errors, the head deadline. So the layer that hides
aiohttp's internals knows neither our routes nor our error shapes.
"""

from __future__ import annotations

import ast
from pathlib import Path

SERVER = Path(__file__).parents[2] / "service" / "server"


def imported_modules(source: str) -> list[str]:
    """Every module that ``source`` imports, relative imports marked by their dots."""
    modules = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules.append("." * node.level + (node.module or ""))
    return modules


def reaches_above(module: str) -> bool:
    """Whether ``module``, imported from service/server/, is part of ``service`` outside it."""
    if module.startswith("."):
        return module.startswith("..")  # a sibling of service/server/, or above
    return (module == "service" or module.startswith("service.")) and not (
        module == "service.server" or module.startswith("service.server.")
    )


def test_service_server_imports_nothing_from_the_rest_of_service() -> None:
    above = {
        path.name: found
        for path in sorted(SERVER.glob("*.py"))
        if (found := [m for m in imported_modules(path.read_text()) if reaches_above(m)])
    }
    assert above == {}, f"service/server/ reaches up into service/: {above}"


def test_an_import_from_above_is_seen() -> None:
    # The rule above must be able to fail.
    source = "import service.keys\nfrom service.observe import record\nfrom .. import errors\n"
    assert [m for m in imported_modules(source) if reaches_above(m)] == [
        "service.keys",
        "service.observe",
        "..",
    ]
    fenced = "from service.server.answers import JsonAnswer\nfrom . import runner\nimport aiohttp\n"
    assert [m for m in imported_modules(fenced) if reaches_above(m)] == []
