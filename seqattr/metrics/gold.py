"""Gold alignments: the sure and possible links of each sentence pair, and the reader of gold files.

The format is that of the standard gold-alignment test sets (one line per sentence pair, whitespace
separated links, 1-based ``source-target`` word indices, special tokens not counted):

- ``i-j`` or ``i-j-S``: a sure link between source word ``i`` and target word ``j``;
- ``i-j-P`` (also ``i-jP`` and ``ipj``, the variants of some releases): a possible link;
- an empty line: a sentence pair without links.

Possible links include the sure ones (Och & Ney 2003: S ⊆ P); `GoldAlignment` keeps that invariant.
Indices are stored 0-based, as `seqattr.data.alignment.Alignment` counts them.

Example:
    >>> gold = parse_gold_line("1-1 2-3 3-2-P")
    >>> sorted(gold.sure), sorted(gold.possible)
    ([(0, 0), (1, 2)], [(0, 0), (1, 2), (2, 1)])
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GoldAlignment:
    """The gold links of one sentence pair, 0-based ``(source, target)`` pairs; ``possible`` ⊇ ``sure``.

    Example:
        >>> gold = GoldAlignment(sure={(0, 0)}, possible={(1, 0)})
        >>> sorted(gold.possible)                       # sure links are possible links too
        [(0, 0), (1, 0)]
    """

    sure: frozenset[tuple[int, int]]
    possible: frozenset[tuple[int, int]] = frozenset()

    def __post_init__(self) -> None:
        sure = frozenset(_check_link(link) for link in self.sure)
        object.__setattr__(self, "sure", sure)
        object.__setattr__(self, "possible", sure | frozenset(_check_link(link) for link in self.possible))

    def steps(self) -> dict[int, frozenset[int]]:
        """For each target index with a gold link, its gold source indices (sure and possible): the
        positions a prediction of that step may link to without an error (`seqattr.metrics.alignment`)."""
        gold: dict[int, set[int]] = {}
        for i, j in self.possible:
            gold.setdefault(j, set()).add(i)
        return {j: frozenset(gold[j]) for j in sorted(gold)}

    def to_text(self, one_based: bool = True) -> str:
        """One line of a gold file: sure links as ``i-j``, possible-only links as ``i-j-P``."""
        offset = 1 if one_based else 0
        links = [(i, j, "") for i, j in self.sure] + [(i, j, "-P") for i, j in self.possible - self.sure]
        return " ".join(f"{i + offset}-{j + offset}{kind}" for i, j, kind in sorted(links))


def _check_link(link) -> tuple[int, int]:
    if not (
        isinstance(link, tuple)
        and len(link) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in link)
    ):
        raise ValueError(f"a gold link is a (source index, target index) pair of integers >= 0, got {link!r}")
    return link


_LINK = re.compile(r"^(\d+)(?:-(\d+)(?:-?([SsPp]))?|[pP](\d+))$")


def parse_gold_line(line: str, one_based: bool = True, line_number: int | None = None) -> GoldAlignment:
    """The `GoldAlignment` of one line of a gold file (``"1-1 2-3 3-2-P"``; see the module docstring).

    Example:
        >>> sorted(parse_gold_line("2-1 1p2").possible)
        [(0, 1), (1, 0)]
    """
    where = f"line {line_number}: " if line_number is not None else ""
    sure, possible = set(), set()
    offset = 1 if one_based else 0
    for item in line.split():
        match = _LINK.match(item)
        if match is None:
            raise ValueError(
                f"{where}cannot read the link {item!r}; gold links are 'i-j' (sure), 'i-j-P' or 'ipj' "
                "(possible), with word indices counted from 1"
            )
        source, target, kind, p_target = match.groups()
        i, j = int(source) - offset, int(target if target is not None else p_target) - offset
        if i < 0 or j < 0:
            raise ValueError(
                f"{where}the link {item!r} has index 0, but indices are counted from 1 (pass one_based=False "
                "for 0-based files)"
            )
        possible_only = p_target is not None or (kind or "S").upper() == "P"
        (possible if possible_only else sure).add((i, j))
    return GoldAlignment(frozenset(sure), frozenset(possible))


def read_gold(source: str | os.PathLike | Iterable[str], one_based: bool = True) -> list[GoldAlignment]:
    """The gold alignments of a file (a path) or of lines (an iterable of strings), one per line.

    Example:
        >>> [sorted(g.sure) for g in read_gold(["1-1 2-2", "", "1-2-P"])]
        [[(0, 0), (1, 1)], [], []]
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(
                f"no gold alignment file at {str(path)!r} (to parse lines, pass a list of strings)"
            )
        lines = path.read_text(encoding="utf-8").splitlines()
    else:
        lines = list(source)
        if not all(isinstance(line, str) for line in lines):
            raise TypeError("read_gold takes a path or an iterable of lines (strings)")
    return [parse_gold_line(line, one_based, number) for number, line in enumerate(lines, start=1)]
