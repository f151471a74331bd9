"""Batch commands handle each input on its own: one bad or missing path never stops the others.

``expand_inputs`` turns the command line's files and folders into image paths plus a failure
entry for each argument that gave nothing; ``BatchReport`` collects per-file failures and
prints them once more at the end, so they are not lost in a long run.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FaceRefineError
from .image_io import ImageTooLargeError, read_header, readable_suffixes


def _folder_images(folder: Path, skipped: list[dict]) -> list[Path]:
    """Every image in ``folder`` (sorted): files with a readable suffix, and files under other names whose
    header is a readable image. Everything else is added to ``skipped`` with the reason, and said on stderr."""
    from .video.io import is_video
    suffixes, found = readable_suffixes(), []
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix.lower() in suffixes:
            found.append(f)
            continue
        reason = None
        if f.is_dir():
            reason = "a folder (folders inside folders are not searched)"
        elif not f.is_file():
            reason = "not a regular file"
        elif is_video(f):
            reason = "a video (restore video files on their own)"
        else:
            try:
                read_header(f, name="")
                found.append(f)  # an image under another name
            except ImageTooLargeError:
                found.append(f)  # the loader reports it for this file
            except FaceRefineError as err:
                reason = str(err)
        if reason:
            skipped.append({"input": str(f), "reason": reason})
            print(f"{f}: skipped, {reason}", file=sys.stderr)
    return found


def expand_inputs(items: list[str | os.PathLike], skipped: list[dict] | None = None) -> tuple[list[Path], list[dict]]:
    """Files and folders (non-recursive, sorted) -> (image paths, failures for paths that gave nothing).

    A named file is kept whatever its suffix (the loader then says whether it can read it);
    a folder contributes every image in it, and the files it skips are said on stderr and added to
    ``skipped`` ({"input", "reason"})."""
    paths: list[Path] = []
    failed: list[dict] = []
    seen: set[str] = set()
    skipped = [] if skipped is None else skipped
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            found = _folder_images(p, skipped)
            if not found:
                failed.append({"input": str(item), "error": f"no images in folder {item}"})
        elif p.is_file():
            found = [p]
        else:
            failed.append({"input": str(item), "error": f"input {item} does not exist"})
            found = []
        for f in found:
            key = os.path.normcase(os.path.abspath(f))
            if key not in seen:  # the same file named twice is done once
                seen.add(key)
                paths.append(f)
    return paths, failed


def error_text(err: BaseException) -> str:
    """What to show for an error that one input caused."""
    if isinstance(err, FaceRefineError):
        return str(err)
    if isinstance(err, OSError):
        from .output_paths import describe_os_error
        return describe_os_error(err, "read or write")
    if isinstance(err, MemoryError) or "out of memory" in str(err).lower():
        return f"out of memory ({err}); try --device cpu or a smaller image"
    return f"{type(err).__name__}: {err}"


@dataclass
class BatchReport:
    """Per-input failures of one batch command."""
    failed: list[dict] = field(default_factory=list)

    def add(self, path, err: BaseException | str) -> None:
        if isinstance(err, BaseException) and not isinstance(err, FaceRefineError):  # a bug: keep its traceback
            logging.getLogger("facerefine").debug("FaceRefine: %s failed", path, exc_info=err)
        message = err if isinstance(err, str) else error_text(err)
        self.failed.append({"input": str(path), "error": message})
        print(f"{path}: error: {message}", file=sys.stderr)

    def extend(self, failures: list[dict]) -> None:
        for f in failures:
            self.add(f["input"], f["error"])

    def summary(self, total: int) -> None:
        """Repeat the failures at the end of the run."""
        if self.failed and total > 1:
            lines = "".join(f"\n  {f['input']}: {f['error']}" for f in self.failed)
            print(f"{len(self.failed)} of {total} input(s) failed:{lines}", file=sys.stderr)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0
