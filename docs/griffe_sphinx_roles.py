"""Griffe extension used by the docs build only: reads gaincell's docstring conventions the way they are meant.

gaincell's docstrings are Google style, but they name other objects with Sphinx roles (:class:`~gaincell.X`,
:meth:`HardwareConfig.replace`), which mkdocstrings would print verbatim.  Before rendering, every role becomes an
autorefs cross-reference when its target is rendered on one of the API pages (a public, documented object of a module
that has a ``::: module`` page under docs/api/), and plain code otherwise.  So a role that names a private object, or
an object of a module without a page, reads well and never breaks ``mkdocs build --strict``; a link is made only where
one can be resolved.

gaincell's Args sections also document parameters that go together on one line (``k, v: keys and values``); griffe's
Google parser expects one name per entry, so such an entry is repeated for each name before parsing.

The source files are not touched.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from griffe import Extension, Module, Object

# :role:`target`, :role:`~target` (show the last name only), optionally written with trailing "()"
ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|exc|obj):`(~?)([A-Za-z_][\w.]*)(\(\))?`")
API_PAGES = Path(__file__).parent / "api"


def documented_modules() -> set[str]:
    """The modules that have an API page: every ``::: name`` line under docs/api/."""
    names = set()
    for page in API_PAGES.glob("*.md"):
        names.update(re.findall(r"^:::\s+([\w.]+)\s*$", page.read_text(), flags=re.MULTILINE))
    return names


class SphinxRoles(Extension):
    def __init__(self) -> None:
        super().__init__()
        self.pages = documented_modules()

    def on_package(self, *, pkg: Module, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None and ":" in obj.docstring.value:
                text = split_grouped_parameters(obj.docstring.value)
                obj.docstring.value = ROLE.sub(lambda m, scope=obj: self._rewrite(m, scope), text)

    def _rewrite(self, match: re.Match[str], scope: Object) -> str:
        short, target, call = match.group(1) == "~", match.group(2), match.group(3) or ""
        label = f"`{(target.rsplit('.', 1)[-1] if short else target)}{call}`"
        path = self._resolve(target, scope)
        return f"[{label}][{path}]" if path else label

    def _resolve(self, target: str, scope: Object) -> str | None:
        """Full path of the target if it is rendered on an API page, else None."""
        head, _, rest = target.partition(".")
        try:
            path = scope.resolve(head) + (f".{rest}" if rest else "")
        except Exception:  # not a name in scope: an absolute path, or nothing griffe knows
            path = target
        try:
            found = scope.modules_collection[path]
        except Exception:
            return None
        # rendered only if every level up to its module is public and documented, and that module has a page
        node = found
        while not node.is_module:
            if not node.is_public or node.docstring is None:
                return None
            node = node.parent
        return path if node.path in self.pages else None


PARAMETER_SECTION = re.compile(r"^(\s*)(Args|Arguments|Parameters|Keyword Args|Keyword Arguments|Other Parameters):\s*$")
GROUPED_ENTRY = re.compile(r"^(\s+)([A-Za-z_]\w*(?:,\s*[A-Za-z_]\w*)+):(\s.*|)$")


def split_grouped_parameters(text: str) -> str:
    """Repeat an Args entry ``a, b: description`` (with its continuation lines) as ``a: ...`` and ``b: ...``."""
    lines = text.split("\n")
    out: list[str] = []
    section_indent: int | None = None  # indentation of the current parameter section's header, if inside one
    i = 0
    while i < len(lines):
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        header = PARAMETER_SECTION.match(line)
        if header:
            section_indent = len(header.group(1))
        elif line.strip() and section_indent is not None and indent <= section_indent:
            section_indent = None  # dedented: the section ended
        entry = GROUPED_ENTRY.match(line) if section_indent is not None and indent > section_indent else None
        if not entry:
            out.append(line)
            i += 1
            continue
        body = [entry.group(3)]
        i += 1
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
            body.append("\n" + lines[i])
            i += 1
        trailing = []
        while len(body) > 1 and not body[-1].strip():
            trailing.insert(0, body.pop()[1:])  # blank lines after the entry stay after the last copy only
        for name in re.split(r",\s*", entry.group(2)):
            out.append(f"{entry.group(1)}{name}:" + "".join(body))
        out.extend(trailing)
    return "\n".join(out)


def _walk(obj: Object) -> list[Object]:
    found = [obj]
    for member in obj.members.values():
        if not member.is_alias:
            found.extend(_walk(member))
    return found
