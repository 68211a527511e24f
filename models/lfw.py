"""Reading LFW-format data: ``<root>/lfw-deepfunneled/<Name>/<Name>_NNNN.jpg`` (or ``<root>/<Name>/…``),
``pairs.txt`` (official View 2 format) and the people list.

Format source: Huang et al., "Labeled Faces in the Wild", UMass Amherst TR 07-49, 2007, README of
the pairs files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


class LFWError(ValueError):
    """The folder is not in LFW format; the message names the file or folder."""


@dataclass(frozen=True)
class Pair:
    """One verification pair: two image paths and whether they show the same person; ``fold`` is 0-based."""

    a: Path
    b: Path
    same: bool
    fold: int


def source_checkout() -> Path | None:
    """The repository folder when this module runs from a source checkout (``<repo>/models/lfw.py`` beside
    ``<repo>/pyproject.toml``), else None (an installed wheel: ``site-packages/dangol_models/``)."""
    repo = Path(__file__).resolve().parent.parent
    return repo if (repo / "pyproject.toml").is_file() and (repo / "models" / "lfw.py").is_file() else None


def data_root() -> Path:
    """The shared data folder: ``$DANGOL_DATA``; in a source checkout also ``<repo>/../shared/data``.

    Raises:
        FileNotFoundError: not found (the message says where it looked and to set ``DANGOL_DATA``).
    """
    env = os.environ.get("DANGOL_DATA")
    if env:
        candidates = [Path(env)]
    else:
        repo = source_checkout()
        candidates = [repo.parent / "shared" / "data"] if repo else []
    for c in candidates:
        if c.is_dir():
            return c
    where = f"at {candidates[0]}" if candidates else "(not a source checkout and DANGOL_DATA is unset)"
    raise FileNotFoundError(f"real data not found {where}: set DANGOL_DATA to the shared/data folder")


class LFWDataset:
    """An LFW-format folder.

    Args:
        root: the folder holding ``pairs.txt`` and either ``lfw-deepfunneled/`` or the identity folders.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        images = self.root / "lfw-deepfunneled"
        self.images = images if images.is_dir() else self.root
        if not self.images.is_dir():
            raise LFWError(f"{self.root}: no such folder")

    def image(self, name: str, number: int) -> Path:
        """Path of ``<Name>/<Name>_NNNN.jpg`` (1-based ``number``)."""
        return self.images / name / f"{name}_{number:04d}.jpg"

    def identities(self) -> dict[str, list[Path]]:
        """All identities and their images, sorted by name: ``{name: [paths...]}``."""
        out: dict[str, list[Path]] = {}
        for d in sorted(p for p in self.images.iterdir() if p.is_dir()):
            files = sorted(d.glob("*.jpg"))
            if files:
                out[d.name] = files
        return out

    def pairs(self) -> list[Pair]:
        """Parse ``pairs.txt``: header ``<folds> <n>``, then per fold n same-person lines
        ``Name i j`` followed by n different-person lines ``NameA i NameB j``.

        Raises:
            LFWError: missing file, bad header or a malformed line (message gives the line number).
        """
        path = self.root / "pairs.txt"
        if not path.is_file():
            raise LFWError(f"{path}: pairs file not found")
        lines = path.read_text().splitlines()
        try:
            folds, n = (int(v) for v in lines[0].split())
        except (ValueError, IndexError) as exc:
            raise LFWError(f"{path}:1: header must be '<folds> <pairs per class>'") from exc
        out: list[Pair] = []
        for lineno, line in enumerate(lines[1:], start=2):
            parts = line.split()
            if not parts:
                continue
            fold = (len(out)) // (2 * n)
            try:
                if len(parts) == 3:
                    out.append(Pair(self.image(parts[0], int(parts[1])), self.image(parts[0], int(parts[2])), True, fold))
                elif len(parts) == 4:
                    out.append(Pair(self.image(parts[0], int(parts[1])), self.image(parts[2], int(parts[3])), False, fold))
                else:
                    raise ValueError("expected 3 or 4 fields")
            except ValueError as exc:
                raise LFWError(f"{path}:{lineno}: malformed pair line {line!r}: {exc}") from exc
        if len(out) != folds * 2 * n:
            raise LFWError(f"{path}: header promises {folds * 2 * n} pairs, file has {len(out)}")
        return out
