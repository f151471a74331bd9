"""Image files <-> core tensors ([B,H,W,3] float32 RGB 0..1 on CPU).

Keeps what a round trip should keep: alpha (returned separately), 16-bit depth,
EXIF orientation (applied on load), grayscale (expanded to RGB).
"""
from __future__ import annotations

import functools
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import ImageInputError

log = logging.getLogger("facerefine")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
_LOSSLESS = (".png", ".tif", ".tiff")
_FLOAT_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class LoadedImage:
    image: torch.Tensor            # [1,H,W,3] float32 RGB 0..1
    alpha: Optional[torch.Tensor]  # [H,W] float32 0..1, or None
    bit_depth: int                 # 8 or 16 (what the file held)
    path: str = ""
    grayscale: bool = False
    exif_orientation: int = 1      # EXIF orientation tag that was applied (1 = none)
    format: str = ""               # PIL's name for the file format ("PNG", "GIF", ...)
    frames: int = 1                # frames/pages in the file; only the first is in ``image``
    floating: bool = False         # float samples (a float TIFF): written back as float where the format can
    raw: Optional[np.ndarray] = None  # [H,W,3] float32 as stored, when values lie outside 0..1 (``image`` clips)
    meta: dict = field(default_factory=dict)  # exif / icc_profile / dpi that save_image(like=...) writes back

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[1]), int(self.image.shape[2])


def readable_suffixes() -> frozenset[str]:
    """File suffixes of the formats load_image reads (READ_FORMATS with a PIL plugin here): .gif, .jfif, ..."""
    from PIL import Image
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in READ_FORMATS)


def list_images(inputs: list[str]) -> list[Path]:
    """Expand files and folders (non-recursive) into image paths, in order."""
    out: list[Path] = []
    suffixes = readable_suffixes()
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix.lower() in suffixes and f.is_file())
        elif p.is_file():
            out.append(p)
        else:
            raise ImageInputError(f"input {item} does not exist")
    if not out:
        raise ImageInputError(f"no images found in {inputs}")
    return out


# TIFF layout tags (size, samples, strips, resolution, ICC...): a TIFF's IFD0 is its EXIF, and these describe the
# input file, not the result, so they are never copied
_LAYOUT_TAGS = (254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 277, 278, 279, 280, 281, 282, 283, 284, 296, 317,
                320, 322, 323, 324, 325, 338, 339, 340, 341, 34675)


def _metadata(path: Path) -> tuple[int, dict]:
    """(the EXIF orientation, what save_image writes back: ``exif`` with the orientation reset to 1 since it
    is applied on load, ``icc_profile``, ``dpi``). Only after the size check: PIL may decode a PNG for its EXIF."""
    try:
        from PIL import Image
        with Image.open(path) as im:
            exif = im.getexif()
            orientation = int(exif.get(0x0112, 1) or 1)
            if orientation != 1:
                exif[0x0112] = 1
            for tag in _LAYOUT_TAGS:
                exif.pop(tag, None)
            meta = {"icc_profile": im.info.get("icc_profile"), "dpi": im.info.get("dpi"),
                    "exif": exif.tobytes() if len(exif) else None}
        return orientation, {k: v for k, v in meta.items() if v}
    except Exception:  # noqa: BLE001 - no EXIF / unreadable header: keep as stored, nothing to carry
        return 1, {}


def apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate/flip an [H,W,...] array as the EXIF orientation tag says."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: np.swapaxes(a, 0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1],
        8: lambda a: np.rot90(a, 1),
    }
    fn = ops.get(orientation)
    return np.ascontiguousarray(fn(arr)) if fn else arr


DEFAULT_MAX_PIXELS = 50_000_000


class ImageTooLargeError(ImageInputError):
    """The image has more pixels than the configured limit (FACEREFINE_MAX_PIXELS)."""


def max_pixels() -> int:
    """The pixel limit for one input image: ``FACEREFINE_MAX_PIXELS`` (a number; 0 = no limit), default 50 MP.

    Every input path (CLI, ComfyUI nodes, the app, A1111) goes through :func:`check_pixel_limit`."""
    raw = os.environ.get("FACEREFINE_MAX_PIXELS", "").strip().replace("_", "")
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw))
    except ValueError:
        log.warning("FACEREFINE_MAX_PIXELS=%r is not a number; using %d", raw, DEFAULT_MAX_PIXELS)
        return DEFAULT_MAX_PIXELS
    return max(value, 0)


def _label(name: Optional[str]) -> str:
    return f"{name}: " if name else ""


def check_pixel_limit(width: int, height: int, name: Optional[str] = "image", limit: Optional[int] = None) -> None:
    """Raise ImageTooLargeError when ``width x height`` is over the limit (default :func:`max_pixels`).
    ``name`` starts the message (None/"" for none)."""
    limit = max_pixels() if limit is None else int(limit)
    pixels = int(width) * int(height)
    if limit and pixels > limit:
        raise ImageTooLargeError(
            f"{_label(name)}image too large: {int(width)}x{int(height)} = {pixels / 1e6:.0f} MP, the limit is "
            f"{limit / 1e6:g} MP. Downscale it first, or raise the limit (FACEREFINE_MAX_PIXELS; memory grows "
            f"with the pixel count).")


# what load_image reads: PIL identifies these and gives their size from the header, before any decoding.
# Anything else (a Radiance HDR or EXR only OpenCV reads, EPS that PIL hands to Ghostscript) is refused.
READ_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "TIFF", "BMP", "DIB", "GIF", "PPM", "TGA", "ICO", "JPEG2000", "QOI",
                "PFM", "AVIF", "HEIF")
_CV2_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "TIFF", "BMP")  # OpenCV decodes these (16 bits kept), PIL the rest


@dataclass(frozen=True)
class ImageHeader:
    width: int
    height: int
    format: str
    frames: int = 1


def _tiff_header(path: Path) -> Optional[ImageHeader]:
    """Size and page count from the IFDs of a TIFF PIL cannot open as an image (e.g. float RGB), or None."""
    from PIL import TiffImagePlugin
    try:
        with open(path, "rb") as f:
            head, pages, seen = f.read(8), [], set()
            if head[:4] not in (b"II*\0", b"MM\0*"):
                return None
            ifd = TiffImagePlugin.ImageFileDirectory_v2(head)
            while ifd.next and ifd.next not in seen and len(seen) < 10000:
                seen.add(ifd.next)
                f.seek(ifd.next)
                ifd.load(f)
                pages.append((int(ifd[256]), int(ifd[257])))
        return ImageHeader(*pages[0], "TIFF", len(pages))
    except Exception:  # noqa: BLE001 - not a TIFF we can size: refused
        return None


def read_header(path: str | os.PathLike, name: Optional[str] = None) -> ImageHeader:
    """What the file header declares, without decoding the pixels (PIL opens lazily).

    ImageInputError for files that are not images PIL identifies as one of READ_FORMATS; ImageTooLargeError
    for a header over PIL's own decompression-bomb limit. ``name`` starts messages (default: the file name)."""
    from PIL import Image, UnidentifiedImageError
    path = Path(path)
    label = _label(path.name if name is None else name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.format not in READ_FORMATS:
                    raise ImageInputError(f"{label}{im.format} images are not read; use a JPEG, PNG, WebP, BMP, "
                                          f"TIFF or GIF")
                return ImageHeader(int(im.size[0]), int(im.size[1]), im.format, int(getattr(im, "n_frames", 1)))
    except Image.DecompressionBombError as err:
        import re
        found = re.search(r"\((\d+) pixels\)", str(err))
        pixels = int(found.group(1)) if found else 0
        raise ImageTooLargeError(
            f"{label}image too large: {pixels / 1e6:.0f} MP declared in its header, the limit is "
            f"{max_pixels() / 1e6:g} MP" if pixels else f"{label}image too large to open safely ({err})") from err
    except UnidentifiedImageError as err:
        header = _tiff_header(path)
        if header is not None:
            return header
        raise ImageInputError(f"{label}not an image file FaceRefine reads ({path.suffix or 'no extension'}): use "
                              f"a JPEG, PNG, WebP, BMP, TIFF or GIF") from err
    except OSError as err:
        raise ImageInputError(f"{label}could not read the image: {err}") from err


def header_size(path: str | os.PathLike, name: Optional[str] = None) -> tuple[int, int]:
    """(width, height) read from the file header without decoding the pixels (see :func:`read_header`)."""
    header = read_header(path, name)
    return header.width, header.height


def check_image_file(path: str | os.PathLike, limit: Optional[int] = None,
                     name: Optional[str] = None) -> tuple[int, int]:
    """(width, height) from the header; ImageInputError if it is not an image, ImageTooLargeError if it is
    over the pixel limit. Nothing is decoded, so a tiny file declaring a huge image costs no memory."""
    width, height = header_size(path, name)
    check_pixel_limit(width, height, Path(path).name if name is None else name, limit)
    return width, height


@functools.lru_cache(maxsize=None)
def _cv2_turns_tiffs() -> bool:
    """Whether this OpenCV applies a TIFF's orientation tag itself, even with IMREAD_UNCHANGED (5.x does)."""
    import io

    import cv2
    from PIL import Image
    exif, buf = Image.Exif(), io.BytesIO()
    exif[0x0112] = 3  # turned 180 degrees
    Image.fromarray(np.array([[0, 255]], np.uint8)).save(buf, "TIFF", exif=exif)
    out = cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_UNCHANGED)
    return out is not None and int(out.ravel()[0]) == 255


def _decode(path: Path, header: ImageHeader) -> tuple[np.ndarray, bool]:
    """(decoded pixels: uint8/uint16/float, channels 1-4, RGB order; whether they are turned by the file's
    orientation already). Only after the header's size was checked; OpenCV only for formats whose signature
    it keys its decoder on as PIL does."""
    import cv2
    arr = None
    if header.format in _CV2_FORMATS:
        data = np.fromfile(str(path), dtype=np.uint8)
        try:
            arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
        except cv2.error as err:  # e.g. over OpenCV's own pixel limit
            raise ImageInputError(f"cannot decode image {path}: {str(err).strip().splitlines()[-1]}") from err
    if arr is not None:
        if arr.ndim == 3 and arr.shape[2] == 3:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
        elif arr.ndim == 3 and arr.shape[2] == 4:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
        return arr, header.format == "TIFF" and _cv2_turns_tiffs()
    try:  # formats OpenCV lacks (gif, some tiffs)
        from PIL import Image
        with Image.open(path) as im:
            if im.mode not in ("L", "LA", "RGB", "RGBA", "I;16", "F"):
                im = im.convert("RGBA" if im.mode in ("PA", "P", "La") else "RGB")
            return np.asarray(im), False
    except Exception as err:
        raise ImageInputError(f"cannot read image {path}: {err}") from err


def load_image(path: str | os.PathLike) -> LoadedImage:
    """Read an image file into the core layout. Raises ImageInputError for unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise ImageInputError(f"image {path} does not exist")
    header = read_header(path)  # what PIL cannot identify is refused: no decoder sees an unchecked size
    check_pixel_limit(header.width, header.height, path.name)
    arr, turned = _decode(path, header)
    check_pixel_limit(arr.shape[1], arr.shape[0], path.name)
    orientation, meta = _metadata(path)
    if not turned:
        arr = apply_orientation(arr, orientation)
    floating = False
    if arr.dtype == np.uint8:
        depth, scaled = 8, arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        depth, scaled = 16, arr.astype(np.float32) / 65535.0
    elif np.issubdtype(arr.dtype, np.floating):
        depth, scaled = 16, arr.astype(np.float32)
        floating = True
    else:
        raise ImageInputError(f"{path}: unsupported pixel type {arr.dtype}")
    if scaled.ndim == 2:
        scaled = scaled[:, :, None]
    channels = scaled.shape[2]
    alpha = None
    if channels in (2, 4):
        alpha = torch.from_numpy(np.ascontiguousarray(scaled[:, :, -1]))
        scaled = scaled[:, :, :-1]
    gray = scaled.shape[2] == 1
    if gray:
        scaled = np.repeat(scaled, 3, axis=2)
    raw = None
    if floating and not (np.nanmin(scaled) >= 0 and np.nanmax(scaled) <= 1):
        raw, scaled = scaled, np.clip(scaled, 0, 1)  # restored within 0..1; values outside are written back
        alpha = None if alpha is None else alpha.clamp(0, 1)
    image = torch.from_numpy(np.ascontiguousarray(scaled))[None]
    image = sanitize_images(image, name=str(path))
    return LoadedImage(image, alpha, depth, str(path), gray, orientation, header.format, header.frames, floating,
                       raw, meta)


def output_notes(loaded: LoadedImage, target: str | os.PathLike) -> list[str]:
    """What the result written to ``target`` by :func:`save_image` (``like=loaded``) does not keep, one line
    each: the frames or pages after the first, float values outside 0..1 in a format without floats."""
    notes, target = [], Path(target)
    if loaded.frames > 1 and loaded.format != "MPO":  # MPO: a phone JPEG's previews / depth map
        kind = "pages" if loaded.format == "TIFF" else "frames"
        notes.append(f"{Path(loaded.path).name} has {loaded.frames} {kind}: only the first was restored "
                     f"(convert an animation to a video to restore every frame)")
    if loaded.raw is not None and target.suffix.lower() not in _FLOAT_SUFFIXES:
        notes.append(f"float values {np.nanmin(loaded.raw):g}..{np.nanmax(loaded.raw):g} are clipped to 0..1 in "
                     f"{target.name} (write a .tif to keep them)")
    lost = [name for key, name in (("exif", "EXIF"), ("icc_profile", "ICC profile")) if key in loaded.meta]
    if lost and target.suffix.lower() in _FLOAT_SUFFIXES and (loaded.bit_depth == 16 and not loaded.grayscale):
        notes.append(f"{' and '.join(lost)} not kept in {target.name}: a 16-bit or float colour TIFF is written "
                     f"without them (write a .png to keep them)")
    return notes


def sanitize_images(images: torch.Tensor, name: str = "image") -> torch.Tensor:
    """Any ComfyUI-like image tensor -> [B,H,W,3] float32 0..1 with NaN/inf replaced (warns)."""
    if not isinstance(images, torch.Tensor):
        images = torch.as_tensor(np.asarray(images))
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ImageInputError(f"{name}: expected an image [B,H,W,C], got shape {tuple(images.shape)}")
    if images.shape[-1] not in (1, 3, 4) and images.shape[1] in (1, 3, 4):
        images = images.permute(0, 2, 3, 1)  # [B,C,H,W] given
    channels = images.shape[-1]
    if channels == 1:
        images = images.expand(*images.shape[:3], 3)
    elif channels == 4:
        images = images[..., :3]
    elif channels != 3:
        raise ImageInputError(f"{name}: expected 1, 3 or 4 channels, got {channels}")
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    elif images.dtype == torch.int16 or images.dtype == torch.int32 or images.dtype == torch.uint16:
        images = images.float() / 65535.0
    elif images.dtype != torch.float32:
        images = images.float()
    if images.shape[0] == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise ImageInputError(f"{name}: empty image {tuple(images.shape)}")
    check_pixel_limit(images.shape[2], images.shape[1], name)
    if not torch.isfinite(images.sum()):  # one pass, no full-size temporary
        warnings.warn(f"{name}: NaN/inf pixel values replaced by 0", RuntimeWarning, stacklevel=2)
        log.warning("%s: NaN/inf pixel values replaced by 0", name)
        images = torch.nan_to_num(images, nan=0.0, posinf=1.0, neginf=0.0)
    return images


def to_uint(image: torch.Tensor, bit_depth: int) -> np.ndarray:
    """[H,W,C] float 0..1 -> uint8/uint16 array with rounding."""
    arr = torch.nan_to_num(image.detach().float().cpu(), nan=0.0).clamp(0, 1).numpy()
    if bit_depth == 16:
        return np.round(arr * 65535.0).astype(np.uint16)
    return np.round(arr * 255.0).astype(np.uint8)


def save_image(path: str | os.PathLike, image: torch.Tensor, alpha: Optional[torch.Tensor] = None,
               bit_depth: int = 8, quality: int = 95, like: Optional[LoadedImage] = None) -> Path:
    """Write [1,H,W,3] / [H,W,3] RGB 0..1 (and optional [H,W] alpha) to PNG/JPEG/WebP/TIFF/BMP.

    ``like``: the loaded input this result comes from: a float input is written as float to TIFF, with
    its values outside 0..1 back; its EXIF, ICC profile and DPI are kept, and a grayscale input is written
    with one channel (see :func:`output_notes` for what some formats cannot hold)."""
    path = Path(path)
    if image.ndim == 4:
        if image.shape[0] != 1:
            raise ImageInputError(f"save_image writes one image, got a batch of {image.shape[0]}")
        image = image[0]
    suffix = path.suffix.lower() or ".png"
    if suffix not in IMAGE_SUFFIXES:
        raise ImageInputError(f"cannot write {path.name}: use one of {IMAGE_SUFFIXES}")
    if bit_depth == 16 and suffix not in _LOSSLESS:
        log.warning("%s cannot hold 16 bits; writing 8-bit", path.name)
        bit_depth = 8
    if alpha is not None and suffix in (".jpg", ".jpeg", ".bmp"):
        log.warning("%s cannot hold alpha; dropping it", path.name)
        alpha = None
    rgb = image.detach().float().cpu()
    if like is not None and like.floating and suffix in _FLOAT_SUFFIXES:
        arr = torch.nan_to_num(rgb, nan=0.0).clamp(0, 1).numpy()
        if like.raw is not None and like.raw.shape == arr.shape:
            arr = np.where((like.raw < 0) | (like.raw > 1), like.raw, arr)
    else:
        arr = to_uint(rgb, bit_depth)
    gray = like is not None and like.grayscale and bool((arr[..., :1] == arr[..., 1:]).all())
    if gray:  # a grayscale input stays one channel (unless the restorer added colour: --allow-color)
        arr = arr[..., :1]
    if alpha is not None:
        a = alpha.detach().float().cpu()[..., None]
        arr = np.concatenate([arr, a.clamp(0, 1).numpy() if arr.dtype == np.float32 else to_uint(a, bit_depth)], -1)
    meta = dict(like.meta) if like is not None else {}
    if meta.get("icc_profile", b"")[16:20] != (b"GRAY" if gray else b"RGB "):
        meta.pop("icc_profile", None)  # never a CMYK (or gray) profile on RGB pixels
    buf = _encode(arr, suffix, quality, meta)
    if buf is None:
        raise ImageInputError(f"could not encode {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    from ..models.tempfiles import unique_temp_path
    tmp = unique_temp_path(path)  # two writers of one image never share a temporary file
    try:
        np.frombuffer(buf, dtype=np.uint8).tofile(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# what PIL writes (L, LA, RGB, RGBA, I;16, F); OpenCV writes 16-bit and float colour
_PIL_WRITES = {("uint8", 1), ("uint8", 2), ("uint8", 3), ("uint8", 4), ("uint16", 1), ("float32", 1)}
_PIL_OPTIONS = {".png": {"compress_level": 1}, ".webp": {"lossless": True}, ".tif": {"compression": "tiff_lzw"},
                ".tiff": {"compression": "tiff_lzw"}}


def _encode(arr: np.ndarray, suffix: str, quality: int, meta: dict) -> Optional[bytes]:
    """File bytes for [H,W,C] pixels (C = 1-4, RGB order) with EXIF, ICC profile and DPI where the format
    holds them: PIL for what it can write, OpenCV for 16-bit / float colour (PNG gets the metadata chunks)."""
    import io

    import cv2
    from PIL import Image
    if (arr.dtype.name, arr.shape[2]) in _PIL_WRITES:
        options = {"quality": int(quality)} if suffix in (".jpg", ".jpeg") else _PIL_OPTIONS.get(suffix, {})
        im = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
        # libtiff (LZW) cannot write an Exif sub-IFD: then uncompressed; EXIF over JPEG's 64 KB: without it
        without_exif = {k: v for k, v in meta.items() if k != "exif"}
        failed = None
        tiff_raw = [({}, meta)] if suffix in _FLOAT_SUFFIXES else []
        for opts, extra in [(options, meta), *tiff_raw, (options, without_exif)]:
            out = io.BytesIO()
            try:
                im.save(out, format=Image.registered_extensions()[suffix], **opts, **extra)
                if extra is without_exif and "exif" in meta:
                    log.warning("FaceRefine: the EXIF could not be written (%s); the image is written without it",
                                failed)
                return out.getvalue()
            except (ValueError, RuntimeError, OSError) as err:
                if extra is without_exif:
                    raise
                failed = err
    if arr.shape[2] == 2:
        arr = arr[..., [0, 0, 0, 1]]
    arr = cv2.cvtColor(arr, cv2.COLOR_RGBA2BGRA if arr.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    dpi = [int(round(v)) for v in meta.get("dpi", ())]
    params = [cv2.IMWRITE_TIFF_RESUNIT, 2, cv2.IMWRITE_TIFF_XDPI, dpi[0], cv2.IMWRITE_TIFF_YDPI, dpi[1]] \
        if dpi and suffix in _FLOAT_SUFFIXES else []
    ok, buf = cv2.imencode(suffix, arr, params)
    if not ok:
        return None
    return _png_chunks(buf.tobytes(), meta) if suffix == ".png" else buf.tobytes()


def _png_chunks(png: bytes, meta: dict) -> bytes:
    """``png`` with iCCP / pHYs / eXIf chunks after its IHDR (for what OpenCV encoded)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    extra = b""
    if meta.get("icc_profile"):
        extra += chunk(b"iCCP", b"ICC profile\0\0" + zlib.compress(meta["icc_profile"]))
    if meta.get("dpi"):
        extra += chunk(b"pHYs", struct.pack(">IIB", *(int(round(v / 0.0254)) for v in meta["dpi"]), 1))
    if meta.get("exif"):
        extra += chunk(b"eXIf", meta["exif"][6:] if meta["exif"].startswith(b"Exif\0\0") else meta["exif"])
    return png[:33] + extra + png[33:]  # 8-byte signature + 25-byte IHDR chunk
