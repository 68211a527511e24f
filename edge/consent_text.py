"""The consent text staff read to a customer (or show them) before they sign up: one file per version,
``consent/<version>.md`` beside this module, installed with the package (``pyproject.toml`` package-data). Staff
confirm the version set in ``display.consent_version`` (the cloud's ``consent_text_version``), and it is recorded
with each consent; ``dangol-edge check-config`` (and ``run``) refuse a version that has no text here
(:func:`render_consent` raises, :mod:`dangol_edge.config_checks` names the setting).

The text states what *this* device does, so the settings that change it are placeholders filled in from the config:
``{version}``, ``{pending_hours}`` (``enrol.pending_ttl_h``, "24 hours"), ``{retention_days}``
(``privacy.retention_days``), ``{welcome_seconds}`` (``display.welcome_s``) and ``{photos}`` (a sentence saying whether
``enrol.keep_photos`` keeps the sign-up snapshots). Any other ``{name}`` is refused, naming the file.

Format: a small Markdown subset, every character escaped: ``# `` and ``## `` headings, ``- `` list items (continued
on the following lines), paragraphs separated by blank lines, ``**bold**``.

A new version: copy the current file to ``edge/consent/<new version>.md`` in the checkout and change it (a version
label is 1-40 letters, digits, ``.``, ``_`` or ``-``), set ``display.consent_version`` and the cloud's
``consent_text_version`` to it, and run ``scripts/install-edge`` (it installs the checkout, this file included).
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import EdgeConfig

#: Where the texts are, one ``<version>.md`` each.
CONSENT_DIR = Path(__file__).parent / "consent"

#: A version label that names a file in :data:`CONSENT_DIR` (no path separators, no leading dot).
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}")

_PLACEHOLDER = re.compile(r"\{([A-Za-z_]*)\}")
_BOLD = re.compile(r"\*\*(.+?)\*\*")

#: The ``{photos}`` sentence, by ``enrol.keep_photos``.
PHOTOS = {False: "The snapshots themselves are not kept: once the numbers are worked out, the pictures are thrown "
                 "away.",
          True: "This café has also chosen to keep the snapshots (small cut-outs of your face) with your record, "
                "encrypted; they are deleted with it."}


class ConsentTextError(ValueError):
    """No usable consent text for a version; the message names the version and the file."""


def consent_path(version: str) -> Path:
    """The file of ``version``'s text (it may not exist).

    Raises:
        ConsentTextError: ``version`` cannot name a file (a path, a leading dot, over 40 characters).
    """
    if not VERSION.fullmatch(version):
        raise ConsentTextError(f"{version!r} cannot name a consent text file: use 1-40 letters, digits, '.', '_' or "
                               "'-' (e.g. 2026-01)")
    return CONSENT_DIR / f"{version}.md"


def available_versions() -> list[str]:
    """The versions that have a text, sorted."""
    return sorted(p.stem for p in CONSENT_DIR.glob("*.md") if VERSION.fullmatch(p.stem))


def settings_of(config: "EdgeConfig") -> dict[str, str]:
    """The placeholder values of ``config`` (see the module docstring)."""
    hours = config.enrol.pending_ttl_h
    return {"version": config.display.consent_version,
            "pending_hours": f"{hours:g} hour{'' if hours == 1 else 's'}",
            "retention_days": str(config.privacy.retention_days),
            "welcome_seconds": f"{config.display.welcome_s:g}",
            "photos": PHOTOS[bool(config.enrol.keep_photos)]}


def render_consent(config: "EdgeConfig") -> str:
    """The HTML of the text of ``display.consent_version``, filled in with ``config``'s settings.

    Raises:
        ConsentTextError: the version has no file here, the file cannot be read as UTF-8, is empty, or it holds a placeholder
            this module does not fill; the message names the version and the file.
    """
    version = config.display.consent_version
    path = consent_path(version)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        others = ", ".join(available_versions()) or "none"
        raise ConsentTextError(
            f"{version!r} has no consent text: {path} is missing. Staff confirm that each customer agreed to this "
            f"text, so it must exist: add edge/consent/{version}.md to the Dangol checkout and run scripts/install-edge "
            f"again (systemd/README.md, step 5), or set a version that has one ({others})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConsentTextError(f"the consent text of {version!r}, {path}, cannot be read: {exc}") from None
    if not text.strip():  # created but never filled in: staff would confirm a text nobody can read
        raise ConsentTextError(f"the consent text of {version!r}, {path}, is empty: write the text the customer "
                               f"agrees to into it, or set a version that has one")
    values = settings_of(config)

    def fill(m: re.Match) -> str:
        if m.group(1) not in values:
            raise ConsentTextError(f"{path}: unknown placeholder {m.group(0)} (known: "
                                   f"{', '.join('{' + k + '}' for k in values)})")
        return values[m.group(1)]

    return to_html(_PLACEHOLDER.sub(fill, text))


def to_html(text: str) -> str:
    """The Markdown subset of the module docstring as HTML (everything escaped)."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        if not lines:  # an empty text
            continue
        if lines[0].startswith("## "):
            out.append(f"<h2>{_inline(' '.join(lines)[3:])}</h2>")
        elif lines[0].startswith("# "):
            out.append(f"<h1>{_inline(' '.join(lines)[2:])}</h1>")
        elif lines[0].startswith("- "):
            items: list[list[str]] = []
            for line in lines:
                if line.startswith("- "):
                    items.append([line[2:]])
                else:
                    items[-1].append(line)
            out.append("<ul>" + "".join(f"<li>{_inline(' '.join(i))}</li>" for i in items) + "</ul>")
        else:
            out.append(f"<p>{_inline(' '.join(lines))}</p>")
    return "\n".join(out)


def _inline(text: str) -> str:
    return _BOLD.sub(r"<strong>\1</strong>", html.escape(text, quote=False))
