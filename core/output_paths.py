"""Where results are written: one naming rule for `restore`, `crop` and the sample photo.

The rules (issue 16):
- an input file is never written;
- an existing file is replaced only with ``overwrite=True`` (``--overwrite``);
- two outputs of one run never get the same name;
- two runs (processes) never get the same name either: a name is reserved on disk at write time
  (``O_CREAT|O_EXCL``), and one another run took since it was decided moves on to the next counter.
A name that is taken gets a counter, as ComfyUI's SaveImage numbers its files:
``photo_restored.png``, then ``photo_restored_00001.png``, ``photo_restored_00002.png`` ...

Everything here is decided before any model is loaded, so a bad target costs no work:
the output folder is created and probed for writing, and the output format is fixed
(a format that cannot be written, such as GIF, becomes PNG for folder outputs and is
refused for an explicit file name).
"""
from __future__ import annotations

import errno
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable, Optional

from ..errors import OutputError
from ..models.tempfiles import name_max
from .image_io import IMAGE_SUFFIXES

WRITABLE_SUFFIXES = IMAGE_SUFFIXES  # what core.image_io.save_image writes
# suffixes that clearly name an image file (so `-o x.gif` is a file name, not a folder to create)
_IMAGE_LIKE = WRITABLE_SUFFIXES + (".gif", ".jxl", ".heic", ".heif", ".avif", ".jp2", ".ico", ".psd", ".exr",
                                   ".hdr", ".pgm", ".ppm", ".pbm", ".pnm", ".svg", ".raw", ".dng")
RESTORED_TAG = "_restored"
COUNTER_DIGITS = 5


def is_writable_suffix(suffix: str) -> bool:
    return suffix.lower() in WRITABLE_SUFFIXES


def names_image_file(path: str | os.PathLike) -> bool:
    """True when ``path`` ends in an image suffix (so it names a file rather than a folder)."""
    return Path(path).suffix.lower() in _IMAGE_LIKE


def output_suffix(input_path: str | os.PathLike) -> tuple[str, Optional[str]]:
    """The suffix of the result for an input: the input's own format when it can be written, else PNG.

    Returns (suffix, note); the note says why the format changed (None when it did not)."""
    suffix = Path(input_path).suffix
    if is_writable_suffix(suffix):
        return suffix, None
    shown = suffix.lstrip(".").upper() or "files without a suffix"
    return ".png", f"{Path(input_path).name}: {shown} cannot be written; the result is saved as PNG"


def describe_os_error(err: OSError, action: str = "write", target: str | os.PathLike | None = None) -> str:
    """A short message for an OS error, with what the user can do."""
    target = str(target or err.filename or "")
    short = re.match(r"(\d+) requested and (\d+) written", str(err))
    if err.errno is None and short:  # numpy's tofile: a short write without errno (full disk, file size limit)
        return (f"cannot {action} {target}: the write stopped after {short.group(2)} of {short.group(1)} bytes "
                f"(is the disk full?)").replace("  ", " ")
    reason = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EFBIG: "the file is too large for this file system",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EISDIR: "it is a folder",
        errno.EEXIST: "a file of that name is in the way",
        errno.ENAMETOOLONG: "the name is too long",
    }.get(err.errno, err.strerror or str(err))
    where = f" {target}" if target else ""
    return f"cannot {action}{where}: {reason}"


def prepare_folder(folder: str | os.PathLike, flag: str = "-o") -> Path:
    """Create ``folder`` if needed and check that files can be written in it (raises OutputError)."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{flag} {folder} is an existing file, not a folder; give a folder "
                          f"(or, for one input, an image file name that does not exist yet)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError as err:  # a file somewhere along the path
        raise OutputError(f"{flag} {folder}: cannot create the folder: a file of that name is in the way") from err
    except OSError as err:
        raise OutputError(f"{flag} {folder}: " + describe_os_error(err, "create the folder")) from err
    try:  # os.access is wrong for root, ACLs and read-only mounts: really create a file
        fd, probe = tempfile.mkstemp(prefix=".facerefine-probe-", dir=folder)
    except OSError as err:
        raise OutputError(f"{flag} {folder}: the folder is not writable: "
                          + describe_os_error(err, "create a file").split(": ", 1)[-1]) from err
    os.close(fd)
    os.unlink(probe)
    return folder


def check_name(path: str | os.PathLike) -> None:
    """OutputError when the file system cannot take the name of ``path`` (so it fails before any work)."""
    path = Path(path)
    size, limit = len(os.fsencode(path.name)), name_max(path.parent if path.parent.is_dir() else ".")
    if size > limit:
        shown = path.name if len(path.name) <= 70 else f"{path.name[:40]}...{path.name[-25:]}"
        raise OutputError(f"cannot write {shown} in {path.parent}: the name is too long ({size} bytes; the file "
                          f"system takes {limit}); rename the input or choose a shorter name")


def _key(path: Path) -> str:
    return os.path.normcase(os.path.abspath(path))


class OutputNamer:
    """Hands out output paths that are never an input, never an existing file (unless overwrite) and
    never handed out twice in one run."""

    def __init__(self, inputs: Iterable[str | os.PathLike] = (), overwrite: bool = False):
        self.overwrite = overwrite
        self._inputs = {_key(Path(p).resolve()) for p in inputs}
        self._claimed: set[str] = set()
        self._wanted: dict[str, Path] = {}  # claimed name -> the name asked for (before any counter)
        self.notes: list[str] = []

    def add_input(self, path: str | os.PathLike) -> None:
        self._inputs.add(_key(Path(path).resolve()))

    def is_input(self, path: str | os.PathLike) -> bool:
        return _key(Path(path).resolve()) in self._inputs

    def _taken(self, path: Path) -> Optional[str]:
        key = _key(path.resolve())
        if key in self._inputs:
            return "it is an input"
        if key in self._claimed:
            return "another result of this run has that name"
        if (path.exists() or path.is_symlink()) and (not self.overwrite or path.is_dir()):
            return "it exists; --overwrite replaces it" if not path.is_dir() else "it is a folder"
        return None

    def claim(self, path: str | os.PathLike) -> Path:
        """``path`` if it is free, else the first free ``<stem>_<counter:05>_<suffix>``; reserves it.
        Raises OutputError for a name the file system cannot take."""
        wanted = Path(path).expanduser()
        candidate, counter = wanted, 0
        check_name(candidate)
        why = first_why = self._taken(candidate)
        while why is not None:
            counter += 1
            candidate = wanted.with_name(f"{wanted.stem}_{counter:0{COUNTER_DIGITS}d}{wanted.suffix}")
            check_name(candidate)
            why = self._taken(candidate)
        if counter:
            self.notes.append(f"{wanted} not used ({first_why}); writing {candidate.name}")
        self._claimed.add(_key(candidate.resolve()))
        self._wanted[_key(candidate.resolve())] = wanted
        return candidate

    def reserve(self, path: str | os.PathLike) -> Path:
        """Take the claimed ``path`` on disk as an empty file (``O_CREAT|O_EXCL``, atomic between processes)
        for the writer to replace; when another run created it since ``claim``, the next free counter name.
        With overwrite the name is used as it is."""
        path = Path(path)
        wanted = self._wanted.get(_key(path.resolve()), path)
        while not self.overwrite:
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                break
            except FileExistsError:
                path = self.claim(wanted)
        return path


def restore_targets(inputs: list[Path], output: str | os.PathLike, *, overwrite: bool = False,
                    tag: str = RESTORED_TAG) -> tuple[list[Path], OutputNamer]:
    """Output path for each input of `restore`, decided before any work.

    ``output`` is a folder (created), or an image file name when there is exactly one input.
    In a folder each result is ``<stem><tag><suffix>`` in the input's format (PNG when that format
    cannot be written). Raises OutputError for a target that cannot work."""
    out = Path(output).expanduser()
    namer = OutputNamer(inputs, overwrite=overwrite)
    if names_image_file(out) and not out.is_dir():
        if len(inputs) != 1:
            raise OutputError(f"-o {out} names one image file but there are {len(inputs)} inputs; "
                              f"give a folder instead")
        if not is_writable_suffix(out.suffix):
            raise OutputError(f"-o {out}: {out.suffix.lstrip('.').upper()} cannot be written; use one of "
                              f"{', '.join(WRITABLE_SUFFIXES)}")
        prepare_folder(out.parent if str(out.parent) else ".")
        return [namer.claim(out)], namer
    prepare_folder(out)
    targets = []
    for path in inputs:
        suffix, note = output_suffix(path)
        if note:
            namer.notes.append(note)
        targets.append(namer.claim(out / f"{Path(path).stem}{tag}{suffix}"))
    return targets, namer


def write_output(target: str | os.PathLike, write, *args, namer: Optional[OutputNamer] = None, **kwargs):
    """``write(target, *args, **kwargs)`` with OS errors (full disk, permissions...) turned into one
    OutputError that names the file; the writer itself leaves no temporary file behind.

    With ``namer`` the target is reserved first (``OutputNamer.reserve``: it may become the next counter
    name) and the reservation is removed when the write fails; returns what ``write`` returns (the path)."""
    reserved = None
    try:
        if namer is not None and not namer.overwrite:
            target = reserved = namer.reserve(target)
        return write(target, *args, **kwargs)
    except BaseException as err:
        if reserved is not None:
            remove_quietly(reserved)
        if not isinstance(err, OSError) or isinstance(err, OutputError):
            raise
        raise OutputError(describe_os_error(err, "write", target)) from err


def remove_quietly(path: str | os.PathLike) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
