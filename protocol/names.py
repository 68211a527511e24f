"""What the door says to a regular: "Welcome back, <greeting>". One rule, shared by the edge (the staff page's
pre-filled "Greet as" field, customers with no greeting of their own: ``dangol-edge enroll --name``, older galleries)
and the cloud (the name in its menus, :func:`dangol_protocol.first_name`).

The rule (:func:`greeting_name`):

* a name with Hangul, kana or CJK ideographs is written family name first ("김 민준", "山田 太郎"): its first word is a
  bare family name, so the greeting is the whole name ("김 민준", and "김민준", written without a space, as it is);
* a name starting with a title ("Dr. Lee", "Ms Park", "Dr. Mina Park") keeps the title with the last word ("Dr. Lee",
  "Ms Park", "Dr. Park");
* otherwise the first word ("Mina Park" → "Mina", "Lin-Manuel Miranda" → "Lin-Manuel").

At most :data:`MAX_GREETING` characters. The staff page's script applies the same rule to the name as it is typed,
from :data:`TITLES` and :data:`FAMILY_NAME_FIRST` (handed to it, so the two cannot drift apart).
"""

from __future__ import annotations

import re

__all__ = ["FAMILY_NAME_FIRST", "MAX_GREETING", "TITLES", "greeting_name"]

#: Longest greeting, characters (the door's headline; also the most of a name a menu carries).
MAX_GREETING = 40

#: Titles kept with the last word of the name (compared without a trailing dot, case-insensitively).
TITLES = ("dr", "mr", "mrs", "ms", "mx", "miss", "prof", "sir", "dame", "rev", "fr")

#: Character ranges (a regular-expression class body, the same in Python and JavaScript) of the scripts whose names
#: are written family name first: Hangul Jamo, Hiragana and Katakana, Hangul compatibility Jamo, CJK ideographs
#: (extension A and the unified block), Hangul syllables.
FAMILY_NAME_FIRST = "\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7a3"
_FAMILY_FIRST = re.compile(f"[{FAMILY_NAME_FIRST}]")


def greeting_name(name: str | None) -> str | None:
    """The greeting for ``name`` by the module's rule (None when ``name`` is empty or blank).

    >>> [greeting_name(n) for n in ("Mina Park", "김 민준", "김민준", "Dr. Lee", "Dr. Mina Park", " ")]
    ['Mina', '김 민준', '김민준', 'Dr. Lee', 'Dr. Park', None]
    """
    words = (name or "").split()
    if not words:
        return None
    if _FAMILY_FIRST.search(name):
        greeting = " ".join(words)
    elif len(words) > 1 and words[0].rstrip(".").casefold() in TITLES:
        greeting = f"{words[0]} {words[-1]}"
    else:
        greeting = words[0]
    return greeting[:MAX_GREETING]
