"""Find, download and parse the Fashion-MNIST IDX files (numpy + stdlib only).

`replicas.data` re-exports the public names; import them from there.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import urllib.request
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np


class DataError(Exception):
    """Missing or malformed data; the message says what is wrong and how to fix it."""


FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
ENV_VAR = "DOWNPOUR_DATA"
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEFAULT_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
_STEMS = tuple(name[: -len(".gz")] for name in FASHION_MNIST_SHA256)
_IDX_LABELS, _IDX_IMAGES = 0x00000801, 0x00000803
_GZIP_MAGIC = b"\x1f\x8b"
_FETCH_TIMEOUT_S = 60


def default_cache_dir() -> Path:
    # Computed per call, not at import, so a changed HOME (tests, sudo) is honoured.
    return Path.home() / ".cache" / "downpour" / "fashion-mnist"


def read_idx(path: Path) -> np.ndarray:
    """Parse a gzipped or plain IDX file: labels -> (n,) uint8, images -> (n, rows, cols) uint8."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    # Sniff the gzip magic too: IDX itself always starts with two zero bytes,
    # so a mis-named compressed file is still read correctly.
    if path.name.endswith(".gz") or raw.startswith(_GZIP_MAGIC):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path} is not a valid gzip file ({exc}); delete it and fetch it again") from exc
    return _parse_idx(raw, path)


def _parse_idx(raw: bytes, path: Path) -> np.ndarray:
    if len(raw) < 4:
        raise DataError(f"{path} is truncated ({len(raw)} bytes); delete it and fetch it again")
    (magic,) = struct.unpack(">I", raw[:4])
    if magic not in (_IDX_LABELS, _IDX_IMAGES):
        raise DataError(
            f"{path} is not an IDX label or image file (magic 0x{magic:08x}, expected "
            f"0x{_IDX_LABELS:08x} or 0x{_IDX_IMAGES:08x}); check that it is the right file"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header; delete it and fetch it again")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(
            f"{path} is {what}: header {dims} needs {expected} bytes, found {len(raw)}; "
            "delete it and fetch it again"
        )
    # Copy so callers get an ordinary writable array, not a view of immutable bytes.
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def idx_file(folder: Path, stem: str) -> Path | None:
    """The file for `stem` in `folder`, preferring the published .gz over an unpacked copy."""
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _missing(folder: Path) -> list[str]:
    return [f"{stem}.gz" for stem in _STEMS if idx_file(folder, stem) is None]


def _absolute(value: str | os.PathLike[str]) -> Path:
    # abspath, not resolve(): keep the user's symlinks but survive a later chdir.
    return Path(os.path.abspath(Path(value).expanduser()))


def _require(folder: Path, origin: str, fix: str) -> Path:
    """Return `folder` if it holds the four files, else fail: the user named it explicitly."""
    missing = _missing(folder)
    if not missing:
        return folder
    state = "does not exist" if not folder.is_dir() else "lacks " + ", ".join(missing)
    raise DataError(
        f"Fashion-MNIST folder {folder} ({origin}) {state} "
        f"(an unpacked copy without .gz is accepted too); {fix}"
    )


def find_fashion_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cache_dir: Path | None = None,
    system_dir: Path | None = None,
    download: bool = True,
) -> Path:
    """Folder holding the four files: data_dir, $DOWNPOUR_DATA, cache, system dir, then download."""
    environ = os.environ if environ is None else environ
    if data_dir is not None:
        fix = "put the four files there or drop --data-dir"
        return _require(_absolute(data_dir), "from --data-dir", fix)
    if environ.get(ENV_VAR):  # an empty value means unset, as shells often leave it
        fix = f"put the four files there or unset {ENV_VAR}"
        return _require(_absolute(environ[ENV_VAR]), f"from {ENV_VAR}", fix)
    cache = _absolute(cache_dir if cache_dir is not None else default_cache_dir())
    system = _absolute(system_dir if system_dir is not None else DEFAULT_SYSTEM_DIR)
    for folder in (cache, system):
        if not _missing(folder):
            return folder
    if not download:
        raise DataError(_not_found(cache, system, "downloading is turned off"))
    try:
        download_fashion_mnist(cache)
    except _FetchFailed as exc:
        raise DataError(_not_found(cache, system, f"the download failed: {exc}")) from exc
    return cache


def _not_found(cache: Path, system: Path, reason: str) -> str:
    return (
        f"Fashion-MNIST not found ({reason}). Provide it one of three ways: "
        f"pass --data-dir DIR, or set {ENV_VAR}=DIR, with DIR holding "
        f"{', '.join(FASHION_MNIST_SHA256)}; "
        f"or install the Debian package {DEBIAN_PACKAGE} (looked in {system}) or allow "
        f"the download from {FASHION_MNIST_URL} into {cache}. "
        "Use --dataset synthetic to run without it."
    )


class _FetchFailed(Exception):
    """A network or disk failure while downloading; turned into the 'not found' DataError."""


def _fetch(url: str, dest: Path) -> None:
    """Write the body of `url` to `dest`: the one network seam, replaced in tests."""
    with urllib.request.urlopen(url, timeout=_FETCH_TIMEOUT_S) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_fashion_mnist(cache: Path) -> None:
    """Fetch each missing .gz into `cache`, verified by sha256 and renamed into place atomically."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _FetchFailed(f"cannot create {cache}: {exc.strerror or exc}") from exc
    for name, expected in FASHION_MNIST_SHA256.items():
        dest = cache / name
        if not dest.is_file():  # files present were verified when they were downloaded
            _download_one(FASHION_MNIST_URL + name, dest, expected)


def _download_one(url: str, dest: Path, expected: str) -> None:
    # A temp name in the same folder makes os.replace atomic, so an interrupted
    # run never leaves a half-written file under the real name.
    part = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        try:
            _fetch(url, part)
        except Exception as exc:  # urllib raises many types: URLError, HTTPError, timeouts, OSError
            raise _FetchFailed(f"{url}: {exc}") from exc
        actual = sha256_of(part)
        if actual != expected:
            raise DataError(
                f"downloaded {dest.name} has the wrong checksum: expected sha256 {expected}, "
                f"got {actual}; it was deleted. Retry later, or fetch the file yourself and "
                f"pass --data-dir or set {ENV_VAR}"
            )
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


def load_fashion_mnist_arrays(folder: Path) -> dict[str, np.ndarray]:
    """Read and validate the four files: keys train_images, train_labels, test_images, test_labels."""
    arrays: dict[str, np.ndarray] = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images_path = _existing(folder, f"{prefix}-images-idx3-ubyte")
        labels_path = _existing(folder, f"{prefix}-labels-idx1-ubyte")
        images, labels = read_idx(images_path), read_idx(labels_path)
        _validate(images, images_path, labels, labels_path)
        arrays[f"{split}_images"] = np.ascontiguousarray(images)
        arrays[f"{split}_labels"] = labels.astype(np.int64)
    return arrays


def _existing(folder: Path, stem: str) -> Path:
    path = idx_file(folder, stem)
    if path is None:
        raise DataError(f"{folder / (stem + '.gz')} is missing; put the four Fashion-MNIST files in {folder}")
    return path


def _validate(images: np.ndarray, images_path: Path, labels: np.ndarray, labels_path: Path) -> None:
    # Local files are not hashed (30 MB per run), so check what training relies on.
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{images_path} holds shape {images.shape}, expected (n, 28, 28) images")
    if labels.ndim != 1:
        raise DataError(f"{labels_path} holds shape {labels.shape}, expected (n,) labels")
    if len(images) == 0 or len(images) != len(labels):
        raise DataError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels; "
            "they must match and be non-empty, so the two files are from different sets"
        )
    if labels.max() >= 10:
        raise DataError(f"{labels_path} has label {int(labels.max())}, expected 0..9")
