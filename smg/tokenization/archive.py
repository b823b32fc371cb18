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
`extract_archive` (each file written to a temporary name and renamed into place, so a reader never
sees half a file) and loads the directory with `smg.tokenization.loader`. The member checks:
only regular files (no symlinks, devices or encrypted entries), names made of `[A-Za-z0-9._-]`
components (no absolute paths, drive letters, backslashes, `.` or `..`; at most 4 deep), no
duplicates, and caps on the archive (`max_archive_bytes`, enforced while receiving), the number
of files, each file and the total, checked against the zip's declared sizes before anything is
inflated (and zipfile reads no more than a member declares, then checks its CRC).

Sending (the simulated worker): `build_archive(directory)` zips the tokenizer files of a
directory deterministically (sorted names, fixed timestamps and modes: the same files give the
same bytes and checksum), and `archive_chunks` slices it with the checksum on the last chunk.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import re
import stat
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
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zlib.error, ValueError, EOFError) as exc:
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
        for info in infos:
            if info.is_dir():
                continue
            if info.filename in members:
                raise ArchiveError(f"tokenizer archive has {info.filename!r} twice")
            try:
                with archive.open(info) as handle:
                    content = handle.read(limits.max_file_bytes + 1)  # to the end: zipfile then checks the CRC
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError) as exc:
                raise ArchiveError(f"tokenizer archive member {info.filename!r} cannot be read: {exc}") from None
            if len(content) > limits.max_file_bytes:
                raise ArchiveError(f"tokenizer archive member {info.filename!r} is larger than {limits.max_file_bytes} bytes")
            members[info.filename] = content
    if not members:
        raise ArchiveError("tokenizer archive holds no files")
    return members


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
    """Write `members` (from `finish`) under `directory`, created if needed; returns it.

    The local, bounded file writes of registration (run it in a worker thread). Each file goes
    to a temporary name and is renamed into place, so a concurrent reader sees the old file or
    the new one; names are checked again, and a symlink on the way (planted in the cache
    directory) is refused rather than followed."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    real_root = root.resolve()
    for name, content in members.items():
        check_member_name(name)
        if name.endswith("/"):
            continue
        target = root.joinpath(*name.split("/"))
        parent = target.parent
        for ancestor in [parent, *parent.parents]:
            if ancestor == root or root not in ancestor.parents:
                break
            if ancestor.is_symlink():
                raise ArchiveError(f"{ancestor} is a symlink; refusing to write {name!r} through it")
        parent.mkdir(parents=True, exist_ok=True)
        if not parent.resolve().is_relative_to(real_root):
            raise ArchiveError(f"{name!r} would be written outside {root}")
        fd, temporary = tempfile.mkstemp(dir=parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
            os.chmod(temporary, 0o644)
            os.replace(temporary, target)  # replaces a symlink at the target itself, never its referent
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    return root


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
