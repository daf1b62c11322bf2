"""The archive sets in a download folder (byte-split zips, 7z volumes, single archives)
and :class:`ConcatenatedFile`, the parts of a byte-split zip read as one seekable file.
"""

from __future__ import annotations

import bisect
import io
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from lesioncl.eyepacs.common import EyepacsError

log = logging.getLogger(__name__)


# `train.zip.001`, `test.7z.0002`: part number after the archive extension.
PART_RE = re.compile(r"^(?P<stem>[^.]+)\.(?P<kind>zip|7z)\.(?P<num>[0-9]{3,})$")
# A whole (unsplit) archive: `train.zip`, `test.7z`.
SINGLE_RE = re.compile(r"^(?P<stem>[^.]+)\.(?P<kind>zip|7z)$")


class ConcatenatedFile(io.RawIOBase):
    """Read-only, seekable view of several files as their concatenation, in order."""

    def __init__(self, paths: list[str | os.PathLike]):
        super().__init__()
        if not paths:
            raise ValueError("ConcatenatedFile needs at least one file")
        self.paths = [Path(p) for p in paths]
        self.sizes = [p.stat().st_size for p in self.paths]
        self.starts = [0]
        for size in self.sizes:
            self.starts.append(self.starts[-1] + size)
        self.size = self.starts[-1]
        self._pos = 0
        self._index = -1
        self._fh: io.BufferedReader | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._pos + offset
        elif whence == io.SEEK_END:
            target = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if target < 0:
            raise ValueError(f"negative seek position {target}")
        self._pos = target
        return self._pos

    def part_at(self, offset: int) -> int:
        """Index of the part holding byte ``offset`` of the concatenation."""
        return min(bisect.bisect_right(self.starts, offset) - 1, len(self.paths) - 1)

    def readinto(self, buffer) -> int:
        if self._pos >= self.size:
            return 0
        index = self.part_at(self._pos)
        if index != self._index:
            if self._fh is not None:
                self._fh.close()
            self._fh = open(self.paths[index], "rb")
            self._index = index
        within = self._pos - self.starts[index]
        self._fh.seek(within)
        view = memoryview(buffer).cast("B")
        want = min(len(view), self.sizes[index] - within)
        got = self._fh.readinto(view[:want])
        if got is None:  # pragma: no cover - regular files never block
            got = 0
        if got < want:
            raise EyepacsError(
                f"{self.paths[index]} shrank while it was being read "
                f"({self.sizes[index]} bytes when opened); another process is writing it"
            )
        self._pos += got
        return got

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        super().close()


@dataclass
class ArchiveSet:
    """One archive, whole or split into numbered parts."""

    stem: str  # train | test | sample ...
    kind: str  # zip | 7z
    parts: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.stem}.{self.kind}"


def find_archive_sets(archives_dir: str | os.PathLike) -> dict[str, ArchiveSet]:
    """The image archives in ``archives_dir`` by stem, parts in order.

    Raises when parts are missing from the numbering (``train.zip.003`` absent
    while ``.004`` is there) or when an archive is both whole and split.
    """
    archives_dir = Path(archives_dir)
    split: dict[tuple[str, str], dict[int, Path]] = {}
    whole: dict[tuple[str, str], Path] = {}
    for entry in os.scandir(archives_dir):
        if not entry.is_file():
            continue
        m = PART_RE.match(entry.name)
        if m:
            key = (m["stem"], m["kind"])
            num = int(m["num"])
            if num in split.setdefault(key, {}):
                raise EyepacsError(
                    f"{archives_dir}: two files number part {num} of {key[0]}.{key[1]} "
                    f"({split[key][num].name}, {entry.name}); delete the wrong one"
                )
            split[key][num] = Path(entry.path)
            continue
        m = SINGLE_RE.match(entry.name)
        if m:
            whole[(m["stem"], m["kind"])] = Path(entry.path)
    sets: dict[str, ArchiveSet] = {}
    for (stem, kind), parts in split.items():
        numbers = sorted(parts)
        first = numbers[0]
        expected = list(range(first, first + len(numbers)))
        if first not in (0, 1) or numbers != expected:
            missing = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
            raise EyepacsError(
                f"{archives_dir}: parts of {stem}.{kind} are missing: "
                f"{', '.join(f'{stem}.{kind}.{n:03d}' for n in missing)}; download them "
                f"(or delete {archives_dir / 'download_manifest.json'} and rerun)"
            )
        if (stem, kind) in whole:
            raise EyepacsError(
                f"{archives_dir}: {stem}.{kind} is there both whole and in parts "
                f"({whole[(stem, kind)].name} and {parts[first].name}…); keep one of them"
            )
        sets[stem] = ArchiveSet(stem, kind, [parts[n] for n in numbers])
    for (stem, kind), path in whole.items():
        if stem in sets:
            raise EyepacsError(
                f"{archives_dir}: two archives for {stem}: {sets[stem].parts[0].name} and "
                f"{path.name}; keep one of them"
            )
        sets[stem] = ArchiveSet(stem, kind, [path])
    return sets
