"""mkdocs hooks (mkdocs.yml): the checks a link checker cannot make.

- Every setting of ``faceid_batch.settings.Settings`` has a row in docs/settings.md (its
  variable, backticked, in the first cell of a table row).
- Every relative link of README.md (outside the docs folder, so not checked by mkdocs)
  points to a file that exists.

A failure stops the build (``mkdocs build --strict`` in scripts/test).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parent.parent
_ROW = re.compile(r"^\|\s*([^|]+)\|")
_NAME = re.compile(r"`([A-Z][A-Z0-9_]+)`")
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def documented_settings(text: str) -> set[str]:
    """The variables named in the first cell of the table rows of ``text``."""
    names: set[str] = set()
    for line in text.splitlines():
        match = _ROW.match(line)
        if match:
            names.update(_NAME.findall(match.group(1)))
    return names


def settings_without_rows() -> list[str]:
    from faceid_batch.settings import Settings

    documented = documented_settings((ROOT / "docs" / "settings.md").read_text())
    return sorted(name.upper() for name in Settings.model_fields
                  if name.upper() not in documented)


def broken_readme_links() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return sorted({target for target in _LINK.findall(text)
                   if "://" not in target and not target.startswith("mailto:")
                   and not (ROOT / target).exists()})


def on_pre_build(config: Any, **_: Any) -> None:
    missing = settings_without_rows()
    if missing:
        raise PluginError("docs/settings.md has no row for: " + ", ".join(missing))
    broken = broken_readme_links()
    if broken:
        raise PluginError("README.md links to files that do not exist: " + ", ".join(broken))
