"""The GetTokenizer transfer: a model's tokenizer files as one zip, streamed in chunks.

When the tokenizer's source (the worker's `tokenizer_path`/`model_path` labels, then
`--tokenizer-path`/`--model-path`) is not a local directory, the gateway asks the worker for its
tokenizer, as the reference does. The RPC, in `smg_grpc_proto` (`common.proto`, served by the
SGLang, vLLM, MLX and TokenSpeed services alike):

    rpc GetTokenizer(smg.grpc.common.GetTokenizerRequest)          // no fields
        returns (stream smg.grpc.common.GetTokenizerChunk);
    message GetTokenizerChunk {
      bytes data = 1;     // a slice of the zip; the slices concatenated are the archive
      string sha256 = 2;  // hex SHA-256 of the whole zip, on the final chunk only ("" before)
    }

Workers zip the tokenizer files of their directory flat (`tokenizer.json`,
`tokenizer_config.json`, `chat_template.jinja`, ...), deflated, in 64 KiB chunks.

Receiving (`ArchiveAssembler`, sans-IO): `feed(chunk.data, chunk.sha256)` for each chunk, then
`finish()`, which checks that the stream ended with its checksum (a stream that ends without one
was cut short, and is refused, though the reference accepts it), that the SHA-256 matches, and
that the zip is one we are willing to unpack, and returns its files **in memory**, as a mapping of
safe relative paths to bytes. Decided so: validation is pure and testable without a disk, and the
caller, which owns the disk cache and runs blocking work in a thread, writes them with
`extract_archive` (the whole tree written in a temporary sibling directory and renamed into place,
replacing what was there, so a reader never sees half a tree) and loads the directory with `smg.tokenization.loader`. The member checks:
only regular files (no symlinks, devices or encrypted entries), names made of `[A-Za-z0-9._-]`
components (no absolute paths, drive letters, backslashes, `.` or `..`; at most 4 deep), no
duplicates, and caps on the archive (`max_archive_bytes`, enforced while receiving), the number
of files (read from the end-of-central-directory record, with the central directory's size,
before zipfile parses the directory), each file and the total, checked against the zip's
declared sizes before anything is inflated, and again while inflating: only stored and deflated
members (zipfile inflates bzip2 and lzma without an output bound), read in bounded pieces and
refused as soon as they pass a cap, whatever they declared (zipfile then checks the CRC).

Sending (the simulated worker): `build_archive(directory)` zips the tokenizer files of a
directory deterministically (sorted names, fixed timestamps and modes: the same files give the
same bytes and checksum), and `archive_chunks` slices it with the checksum on the last chunk.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import os
import re
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

CHUNK_SIZE = 64 * 1024  # what the SGLang/vLLM servicers send

#: The files a worker puts in the archive (the servicers' list), and the patterns beside them.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "tiktoken.model",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
)
TOKENIZER_GLOBS = ("*.jinja", "*.tiktoken", "*.model")

_COMPONENT = re.compile(r"[A-Za-z0-9._-]{1,255}")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the zip epoch: no build time leaks into the bytes
_MAX_DEPTH = 4
_METHODS = frozenset((zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED))
_READ_SIZE = 1 << 20  # a member is inflated at most this much at a time
#: Bytes a central directory may hold per allowed entry: the 46-byte header, a name (at most 4
#: components of 255), and room for the extra fields and comment real writers add.
_MAX_DIRECTORY_ENTRY = 46 + 1024 + 2048
_ECD_ENTRIES_TOTAL = 4  # zipfile's indices into its end-of-central-directory record
_ECD_SIZE = 5


class ArchiveError(ValueError):
    """The transfer or the archive is refused; the message says why (the caller names the worker)."""


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    """Caps on one tokenizer archive. Real ones are a few MiB to a few tens (a 250k-entry
    tokenizer.json is ~35 MiB, deflated to ~10); the caps are the reference's order of magnitude."""

    max_archive_bytes: int = 200 * 1024 * 1024
    max_files: int = 64
    max_file_bytes: int = 256 * 1024 * 1024
    max_total_bytes: int = 512 * 1024 * 1024


DEFAULT_LIMITS = ArchiveLimits()


class ArchiveAssembler:
    """Collects the chunks of one GetTokenizer stream; see the module docstring."""

    __slots__ = ("_buffer", "_chunks", "_digest", "_expected", "limits")

    def __init__(self, limits: ArchiveLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._buffer = bytearray()
        self._digest = hashlib.sha256()
        self._expected: str | None = None
        self._chunks = 0

    @property
    def received(self) -> int:
        """Bytes received so far."""
        return len(self._buffer)

    def feed(self, data: bytes, sha256: str = "") -> None:
        """One GetTokenizerChunk: its `data`, and its `sha256` (empty except on the last chunk)."""
        if self._expected is not None:
            raise ArchiveError("tokenizer archive: a chunk came after the one carrying the checksum")
        if len(self._buffer) + len(data) > self.limits.max_archive_bytes:
            raise ArchiveError(f"tokenizer archive is larger than {self.limits.max_archive_bytes} bytes")
        self._buffer += data
        self._digest.update(data)
        self._chunks += 1
        if sha256:
            if not _SHA256_HEX.fullmatch(sha256):
                raise ArchiveError(f"tokenizer archive checksum {sha256[:80]!r} is not a SHA-256 hex digest")
            self._expected = sha256.lower()

    def finish(self) -> dict[str, bytes]:
        """The archive's files once the stream has ended: relative path -> content."""
        if not self._chunks:
            raise ArchiveError("tokenizer archive stream was empty")
        if self._expected is None:
            raise ArchiveError(f"tokenizer archive stream ended without its checksum after {len(self._buffer)} bytes (truncated)")
        actual = self._digest.hexdigest()
        if not hmac.compare_digest(actual, self._expected):
            raise ArchiveError(
                f"tokenizer archive checksum mismatch: the worker sent {self._expected}, the bytes hash to {actual}"
            )
        return read_archive(bytes(self._buffer), self.limits)


def read_archive(data: bytes, limits: ArchiveLimits = DEFAULT_LIMITS) -> dict[str, bytes]:
    """The files of a zip, every member checked (module docstring); ArchiveError otherwise."""
    _check_directory_size(data, limits)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zlib.error, ValueError, EOFError, OverflowError) as exc:
        raise ArchiveError(f"tokenizer archive is not a valid zip: {exc}") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_files:
            raise ArchiveError(f"tokenizer archive has {len(infos)} entries, more than {limits.max_files}")
        total = 0
        for info in infos:
            check_member_name(info.filename)
            if info.is_dir():
                continue
            _check_member_type(info)
            if info.file_size > limits.max_file_bytes:
                raise ArchiveError(f"tokenizer archive member {info.filename!r} is larger than {limits.max_file_bytes} bytes")
            total += info.file_size
            if total > limits.max_total_bytes:
                raise ArchiveError(f"tokenizer archive unpacks to more than {limits.max_total_bytes} bytes")
        members: dict[str, bytes] = {}
        total = 0
        for info in infos:
            if info.is_dir():
                continue
            if info.filename in members:
                raise ArchiveError(f"tokenizer archive has {info.filename!r} twice")
            content = _read_member(archive, info, limits, limits.max_total_bytes - total)
            total += len(content)
            members[info.filename] = content
    if not members:
        raise ArchiveError("tokenizer archive holds no files")
    return members


def _check_directory_size(data: bytes, limits: ArchiveLimits) -> None:
    """Refuse a zip whose central directory is over the caps, from its end-of-central-directory
    record (zip64 included), before `ZipFile` parses the directory: it reads every entry the
    directory's declared size holds, whatever the entry count says, so both are capped."""
    try:
        # zipfile's own reading of the record, so the numbers are the ones ZipFile will use
        end = zipfile._EndRecData(io.BytesIO(data))  # type: ignore[attr-defined]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error) as exc:
        raise ArchiveError(f"tokenizer archive is not a valid zip: {exc}") from None
    if end is None:
        raise ArchiveError("tokenizer archive is not a valid zip: no end-of-central-directory record")
    entries, size = end[_ECD_ENTRIES_TOTAL], end[_ECD_SIZE]
    if entries > limits.max_files:
        raise ArchiveError(f"tokenizer archive has {entries} entries, more than {limits.max_files}")
    if size > limits.max_files * _MAX_DIRECTORY_ENTRY:
        raise ArchiveError(f"tokenizer archive's central directory is {size} bytes, too large for {limits.max_files} entries")


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limits: ArchiveLimits, left: int) -> bytes:
    """A member's content, read in bounded pieces whatever its header declares, refused as soon as
    it passes the file cap or what is `left` of the total cap. Only stored and deflated members:
    zipfile inflates bzip2 and lzma data without an output bound."""
    if info.compress_type not in _METHODS:
        raise ArchiveError(
            f"tokenizer archive member {info.filename!r} uses compression method {info.compress_type}; "
            "only stored and deflated members are accepted"
        )
    pieces: list[bytes] = []
    size = 0
    try:
        with archive.open(info) as handle:
            while piece := handle.read(_READ_SIZE):  # to the end: zipfile then checks the CRC
                size += len(piece)
                if size > limits.max_file_bytes:
                    raise ArchiveError(f"tokenizer archive member {info.filename!r} is larger than {limits.max_file_bytes} bytes")
                if size > left:
                    raise ArchiveError(f"tokenizer archive unpacks to more than {limits.max_total_bytes} bytes")
                pieces.append(piece)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError, OverflowError) as exc:
        if isinstance(exc, ArchiveError):
            raise
        raise ArchiveError(f"tokenizer archive member {info.filename!r} cannot be read: {exc}") from None
    return b"".join(pieces)


def check_member_name(name: str) -> str:
    """`name` if it is a safe relative path (a trailing "/" marks a directory entry)."""
    path = name[:-1] if name.endswith("/") else name
    parts = path.split("/")
    if (
        not path
        or "\\" in name
        or "\x00" in name
        or name.startswith("/")
        or re.match(r"[A-Za-z]:", name)
        or len(parts) > _MAX_DEPTH
        or any(part in (".", "..") or not _COMPONENT.fullmatch(part) for part in parts)
    ):
        raise ArchiveError(f"tokenizer archive member name {name[:200]!r} is not a safe relative path")
    return name


def _check_member_type(info: zipfile.ZipInfo) -> None:
    if info.flag_bits & 0x1:
        raise ArchiveError(f"tokenizer archive member {info.filename!r} is encrypted")
    kind = stat.S_IFMT(info.external_attr >> 16)
    # Unix modes: a symlink, device, fifo... Writers that set permissions without a type (Python's
    # `writestr` among them) mean a regular file.
    if info.create_system == 3 and kind and kind != stat.S_IFREG:
        raise ArchiveError(f"tokenizer archive member {info.filename!r} is not a regular file")


def extract_archive(members: Mapping[str, bytes], directory: str | Path) -> Path:
    """Write `members` (from `finish`) as the directory `directory` (its parent created if
    needed); returns it.

    The local, bounded file writes of registration (run it in a worker thread). All or nothing:
    the files are written into a fresh temporary sibling directory, which is then renamed to
    `directory`, so a reader (the loader) sees a complete tree or none, never a mix. An existing
    `directory` is **replaced** as a whole (its old files do not survive): it is renamed aside,
    the new tree renamed into place, and the old one removed; in between, for a moment, the path
    does not exist. Of concurrent extracts into one directory the last rename wins, whole. Names
    are checked again, and names that collide (a file also used as a directory, or the same path
    twice) are refused before anything is written. A symlink at `directory` itself is replaced,
    never followed."""
    root = Path(directory)
    files = _plan_extraction(members)
    parent = root.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{root.name}.part-"))
    try:
        for parts, content in files:
            target = staging.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "xb") as handle:  # a fresh tree: nothing there to follow or replace
                handle.write(content)
            os.chmod(target, 0o644)
        os.chmod(staging, 0o755)
        _swap_into_place(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def _plan_extraction(members: Mapping[str, bytes]) -> list[tuple[list[str], bytes]]:
    """The files to write, as path components; ArchiveError on an unsafe or colliding name."""
    files: list[tuple[list[str], bytes]] = []
    file_paths: set[tuple[str, ...]] = set()
    dir_paths: set[tuple[str, ...]] = set()
    for name, content in members.items():
        check_member_name(name)
        is_dir = name.endswith("/")
        parts = (name[:-1] if is_dir else name).split("/")
        ancestors = [tuple(parts[:i]) for i in range(1, len(parts))]
        key = tuple(parts)
        if any(a in file_paths for a in ancestors) or key in file_paths or (not is_dir and key in dir_paths):
            raise ArchiveError(f"tokenizer archive member {name!r} collides with another member's path")
        dir_paths.update(ancestors)
        if is_dir:
            dir_paths.add(key)
        else:
            file_paths.add(key)
            files.append((parts, content))
    return files


def _swap_into_place(staging: Path, root: Path) -> None:
    """Rename `staging` to `root`, moving whatever is at `root` aside first. Concurrent extracts
    race here: between a failed rename and the next step another one may move `root` away or put
    its own tree there, so every failure goes round again (a lasting error, e.g. permissions,
    fails every round and is raised at the end)."""
    error: OSError | None = None
    for _ in range(16):
        try:
            os.rename(staging, root)  # succeeds when `root` is absent (or an empty directory)
            return
        except OSError as exc:
            error = exc
        old = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.old-"))
        try:
            with contextlib.suppress(FileNotFoundError):  # a concurrent extract moved it first
                os.rename(root, old / "tree")  # aside, as a whole (a symlink is moved, not followed)
            os.rename(staging, root)
            return
        except OSError as exc:
            error = exc  # a concurrent extract put its tree there in between: go round again
        finally:
            shutil.rmtree(old, ignore_errors=True)
    raise ArchiveError(f"could not put the tokenizer files in place at {root}: {error}")


# -- the sending side (the simulated worker) ------------------------------------------------


def tokenizer_files(directory: str | Path) -> list[Path]:
    """The tokenizer files of a model directory that a worker sends: the servicers' list."""
    root = Path(directory)
    found: dict[str, Path] = {}
    for name in TOKENIZER_FILES:
        if (root / name).is_file():
            found[name] = root / name
    for pattern in TOKENIZER_GLOBS:
        for path in sorted(root.glob(pattern)):
            if path.is_file():
                found.setdefault(path.name, path)
    return [found[name] for name in sorted(found)]


def build_archive(directory: str | Path) -> tuple[bytes, str]:
    """The zip of `directory`'s tokenizer files and its SHA-256 hex, deterministic for the same
    files. Raises ArchiveError when there are none."""
    files = tokenizer_files(directory)
    if not files:
        raise ArchiveError(f"no tokenizer files in {directory}")
    return zip_files({path.name: path.read_bytes() for path in files})


def zip_files(files: Mapping[str, bytes]) -> tuple[bytes, str]:
    """A deterministic deflated zip of `files` (name -> content) and its SHA-256 hex."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo(check_member_name(name), date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            archive.writestr(info, files[name])
    data = buffer.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def archive_chunks(data: bytes, sha256: str, chunk_size: int = CHUNK_SIZE) -> Iterator[tuple[bytes, str]]:
    """(data, sha256) for each GetTokenizerChunk: the checksum on the last one only."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    offsets = range(0, len(data), chunk_size)
    last = len(offsets) - 1
    for index, offset in enumerate(offsets):
        yield data[offset : offset + chunk_size], sha256 if index == last else ""


__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_LIMITS",
    "TOKENIZER_FILES",
    "TOKENIZER_GLOBS",
    "ArchiveAssembler",
    "ArchiveError",
    "ArchiveLimits",
    "archive_chunks",
    "build_archive",
    "check_member_name",
    "extract_archive",
    "read_archive",
    "tokenizer_files",
    "zip_files",
]
