"""smg.tokenization.archive: the GetTokenizer zip, both ways. A directory goes to chunks and back
to an identical directory; a wrong or missing checksum, a cut stream, unsafe member names or
types, and archives over the caps are refused with a clear ArchiveError."""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import os
import random
import stat
import struct
import zipfile
from pathlib import Path

import pytest
from smg_grpc_proto.generated import common_pb2, sglang_scheduler_pb2

from smg.tokenization.archive import (
    CHUNK_SIZE,
    ArchiveAssembler,
    ArchiveError,
    ArchiveLimits,
    archive_chunks,
    build_archive,
    check_member_name,
    extract_archive,
    read_archive,
    tokenizer_files,
    zip_files,
)
from smg.tokenization.loader import load_model_tokenizer

SIM_MODEL = Path(__file__).resolve().parents[2] / "smg" / "simworker" / "model"


def assemble(data: bytes, sha256: str, chunk_size: int = CHUNK_SIZE, limits: ArchiveLimits | None = None) -> dict[str, bytes]:
    assembler = ArchiveAssembler(limits) if limits else ArchiveAssembler()
    for chunk, digest in archive_chunks(data, sha256, chunk_size):
        assembler.feed(chunk, digest)
    return assembler.finish()


def raw_zip(*entries: tuple[str | zipfile.ZipInfo, bytes]) -> tuple[bytes, str]:
    """A zip written entry by entry, with whatever names and attributes the test wants."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in entries:
            archive.writestr(name, content)
    data = buffer.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def test_the_rpc_fields_are_the_ones_fed() -> None:
    """GetTokenizer streams smg.grpc.common.GetTokenizerChunk{data, sha256} in the installed stubs."""
    method = sglang_scheduler_pb2.DESCRIPTOR.services_by_name["SglangScheduler"].methods_by_name["GetTokenizer"]
    assert method.server_streaming and method.output_type.full_name == "smg.grpc.common.GetTokenizerChunk"
    assert [f.name for f in method.output_type.fields] == ["data", "sha256"]
    assert [f.name for f in method.input_type.fields] == []
    data, sha256 = build_archive(SIM_MODEL)
    assembler = ArchiveAssembler()
    for chunk in (common_pb2.GetTokenizerChunk(data=d, sha256=s) for d, s in archive_chunks(data, sha256)):
        assembler.feed(chunk.data, chunk.sha256)
    assert set(assembler.finish()) == {"generation_config.json", "tokenizer.json", "tokenizer_config.json"}


def test_round_trip_directory_to_chunks_to_directory(tmp_path: Path) -> None:
    data, sha256 = build_archive(SIM_MODEL)
    chunks = list(archive_chunks(data, sha256, chunk_size=4096))
    assert len(chunks) > 10 and all(digest == "" for _, digest in chunks[:-1]) and chunks[-1][1] == sha256
    assert b"".join(chunk for chunk, _ in chunks) == data
    members = assemble(data, sha256, chunk_size=4096)
    target = extract_archive(members, tmp_path / "cache" / sha256)
    for path in tokenizer_files(SIM_MODEL):
        assert (target / path.name).read_bytes() == path.read_bytes()
    original, copy = load_model_tokenizer(SIM_MODEL), load_model_tokenizer(target)
    text = "Hello 🙂 <tool_call>\n{}\n</tool_call>"
    assert copy.encode(text) == original.encode(text) and copy.chat_templates == original.chat_templates
    assert copy.eos_token_ids == original.eos_token_ids


def test_archive_is_deterministic_and_chunks_cover_it() -> None:
    assert build_archive(SIM_MODEL) == build_archive(SIM_MODEL)
    data, sha256 = zip_files({"b.json": b"{}", "a.jinja": b"x"})
    assert zipfile.ZipFile(io.BytesIO(data)).namelist() == ["a.jinja", "b.json"]
    assert list(archive_chunks(data, sha256, chunk_size=len(data) + 1)) == [(data, sha256)]
    assert [len(c) for c, _ in archive_chunks(b"x" * 10, "s", chunk_size=4)] == [4, 4, 2]
    with pytest.raises(ValueError, match="positive"):
        list(archive_chunks(data, sha256, chunk_size=0))


def test_only_tokenizer_files_are_sent(tmp_path: Path) -> None:
    for name in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "tool_use.jinja",
        "qwen.tiktoken",
        "model.safetensors",
        "README.md",
    ]:
        (tmp_path / name).write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "tokenizer.json").write_text("x")
    assert [p.name for p in tokenizer_files(tmp_path)] == [
        "chat_template.jinja",
        "qwen.tiktoken",
        "tokenizer.json",
        "tokenizer_config.json",
        "tool_use.jinja",
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArchiveError, match="no tokenizer files in"):
        build_archive(tmp_path / "empty")


# -- the stream ---------------------------------------------------------------------------------


def test_wrong_checksum_is_refused() -> None:
    data, sha256 = zip_files({"tokenizer.json": b"{}"})
    wrong = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(ArchiveError, match=f"checksum mismatch: the worker sent {wrong}"):
        assemble(data, wrong)
    assert assemble(data, sha256.upper()) == {"tokenizer.json": b"{}"}  # hex in either case


def test_malformed_checksum_is_refused() -> None:
    with pytest.raises(ArchiveError, match="is not a SHA-256 hex digest"):
        ArchiveAssembler().feed(b"x", "abc")


def test_truncated_stream_is_refused() -> None:
    data, sha256 = zip_files({"tokenizer.json": random.Random(0).randbytes(20_000)})  # incompressible: many chunks
    chunks = list(archive_chunks(data, sha256, chunk_size=1024))
    cut = ArchiveAssembler()
    for chunk, digest in chunks[:-1]:  # the stream ended before the last chunk
        cut.feed(chunk, digest)
    with pytest.raises(ArchiveError, match=r"ended without its checksum after \d+ bytes \(truncated\)"):
        cut.finish()
    missing_middle = ArchiveAssembler()
    for chunk, digest in chunks[:1] + chunks[2:]:
        missing_middle.feed(chunk, digest)
    with pytest.raises(ArchiveError, match="checksum mismatch"):
        missing_middle.finish()
    with pytest.raises(ArchiveError, match="stream was empty"):
        ArchiveAssembler().finish()


def test_a_chunk_after_the_checksum_is_refused() -> None:
    assembler = ArchiveAssembler()
    assembler.feed(b"abc", hashlib.sha256(b"abc").hexdigest())
    with pytest.raises(ArchiveError, match="after the one carrying the checksum"):
        assembler.feed(b"more")


def test_the_stream_is_capped_while_it_arrives() -> None:
    assembler = ArchiveAssembler(ArchiveLimits(max_archive_bytes=10_000))
    assembler.feed(b"x" * 6000)
    assert assembler.received == 6000
    with pytest.raises(ArchiveError, match="larger than 10000 bytes"):
        assembler.feed(b"x" * 6000)


def test_not_a_zip_or_an_empty_one() -> None:
    with pytest.raises(ArchiveError, match="not a valid zip"):
        assemble(b"PK\x03\x04 not really", hashlib.sha256(b"PK\x03\x04 not really").hexdigest())
    with pytest.raises(ArchiveError, match="holds no files"):
        assemble(*raw_zip(("dir/", b"")))


# -- the members --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["../x", "a/../../x", "/etc/passwd", "C:/windows/x", "a\\b", "./a", "a//b", "", "a/b/c/d/e", "..", "tok\x00en", "é.json"],
)
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(ArchiveError, match="not a safe relative path"):
        check_member_name(name)
    info = zipfile.ZipInfo("placeholder")
    info.filename = name  # zipfile normalizes some names when writing; set it as a hostile writer would
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(info, b"x")
    data = buffer.getvalue()
    if "\x00" in name:  # zipfile cuts a name at its NUL when reading: this one arrives as "tok"
        assert set(assemble(data, hashlib.sha256(data).hexdigest())) == {"tok"}
        return
    with pytest.raises(ArchiveError):
        assemble(data, hashlib.sha256(data).hexdigest())


def test_safe_names_pass() -> None:
    for name in ["tokenizer.json", "additional_chat_templates/tool_use.jinja", "a-b_c.1", "dir/"]:
        assert check_member_name(name) == name


def test_symlink_and_other_special_entries_are_refused() -> None:
    link = zipfile.ZipInfo("tokenizer.json")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with pytest.raises(ArchiveError, match=r"'tokenizer\.json' is not a regular file"):
        assemble(*raw_zip((link, b"/etc/passwd")))
    fifo = zipfile.ZipInfo("fifo")
    fifo.create_system = 3
    fifo.external_attr = (stat.S_IFIFO | 0o644) << 16
    with pytest.raises(ArchiveError, match="not a regular file"):
        assemble(*raw_zip((fifo, b"")))
    data = bytearray(raw_zip(("tokenizer.json", b"x"))[0])
    central = data.index(b"PK\x01\x02")
    data[central + 8] |= 0x1  # the central directory's "encrypted" flag (zipfile clears it when writing)
    with pytest.raises(ArchiveError, match="encrypted"):
        read_archive(bytes(data))


def test_duplicate_members_are_refused() -> None:
    with pytest.warns(UserWarning, match="Duplicate name"):
        data, sha256 = raw_zip(("tokenizer.json", b"a"), ("tokenizer.json", b"b"))
    with pytest.raises(ArchiveError, match="twice"):
        assemble(data, sha256)


def test_size_caps() -> None:
    bomb = b"\0" * 5_000_000  # deflates to a few kB
    data, sha256 = zip_files({"tokenizer.json": bomb})
    assert len(data) < 20_000
    with pytest.raises(ArchiveError, match=r"'tokenizer\.json' is larger than 1000000 bytes"):
        assemble(data, sha256, limits=ArchiveLimits(max_file_bytes=1_000_000))
    data, sha256 = zip_files({f"f{i}.json": b"x" * 600 for i in range(5)})
    with pytest.raises(ArchiveError, match="unpacks to more than 2000 bytes"):
        assemble(data, sha256, limits=ArchiveLimits(max_total_bytes=2000))
    with pytest.raises(ArchiveError, match="5 entries, more than 4"):
        assemble(data, sha256, limits=ArchiveLimits(max_files=4))
    assert len(assemble(data, sha256, limits=ArchiveLimits(max_files=5, max_total_bytes=3000))) == 5


def test_a_member_whose_data_does_not_match_its_header_is_refused() -> None:
    data = bytearray(zip_files({"tokenizer.json": b"hello world" * 100})[0])
    start = data.index(b"tokenizer.json") + len("tokenizer.json")  # just past the local header's name
    data[start + 5] ^= 0xFF  # corrupt the deflated bytes
    with pytest.raises(ArchiveError, match="cannot be read"):
        read_archive(bytes(data))


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_only_stored_and_deflated_members_are_inflated(method: int) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        archive.writestr("tokenizer.json", b"{}")
    data = buffer.getvalue()
    with pytest.raises(ArchiveError, match=f"compression method {method}; only stored and deflated"):
        assemble(data, hashlib.sha256(data).hexdigest())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("tokenizer.json", b"{}")
    assert read_archive(buffer.getvalue()) == {"tokenizer.json": b"{}"}


def _lie_about_size(data: bytes, name: str, size: int) -> bytes:
    """`data` with `name`'s declared uncompressed size set to `size`, in both of its headers."""
    out = bytearray(data)
    local = out.index(b"PK\x03\x04")  # the only member: its local header comes first
    struct.pack_into("<I", out, local + 22, size)
    central = out.index(b"PK\x01\x02")
    assert out[central + 46 : central + 46 + len(name)] == name.encode()
    struct.pack_into("<I", out, central + 24, size)
    return bytes(out)


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
def test_a_member_is_capped_while_inflating_whatever_it_declares(method: int, monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        archive.writestr("tokenizer.json", b"\0" * 3_000_000)
    data = _lie_about_size(buffer.getvalue(), "tokenizer.json", 10)
    reads: list[int] = []
    real_read = zipfile.ZipExtFile.read

    def counting_read(self: zipfile.ZipExtFile, n: int = -1) -> bytes:
        reads.append(n)
        return real_read(self, n)

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting_read)
    # zipfile stops at the declared size and then fails the CRC; either way, bounded reads only
    with pytest.raises(ArchiveError, match=r"tokenizer\.json"):
        read_archive(data)  # the default caps: a read of up to the cap at once would be 256 MiB
    assert reads and all(0 < n <= 1 << 20 for n in reads)


def test_the_entry_count_is_read_before_the_central_directory_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    data, _ = zip_files({f"f{i}.json": b"x" for i in range(300)})

    def no_zipfile(*args: object, **kwargs: object) -> None:
        raise AssertionError("ZipFile was constructed")

    monkeypatch.setattr(zipfile, "ZipFile", no_zipfile)
    with pytest.raises(ArchiveError, match="300 entries, more than 64"):
        read_archive(data)
    # a record that understates the count: the directory's size still gives it away
    lying = bytearray(data)
    end = lying.rindex(b"PK\x05\x06")
    struct.pack_into("<HH", lying, end + 8, 1, 1)
    with pytest.raises(ArchiveError, match=r"central directory is \d+ bytes, too large for 2 entries"):
        read_archive(bytes(lying), ArchiveLimits(max_files=2))
    with pytest.raises(ArchiveError, match="not a valid zip"):
        read_archive(b"PK\x03\x04 not a zip at all")


# -- writing ------------------------------------------------------------------------------------


def test_extract_replaces_the_directory_whole_and_never_follows_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "cache"
    extract_archive({"tokenizer.json": b"old", "sub/a.jinja": b"t"}, target)
    extract_archive({"tokenizer.json": b"new"}, target)
    assert (target / "tokenizer.json").read_bytes() == b"new"
    assert not (target / "sub").exists()  # replaced as a whole: nothing of the old tree is mixed in
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no staging or old tree left behind
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.json").write_bytes(b"keep")
    link = tmp_path / "linked"
    link.symlink_to(outside, target_is_directory=True)
    extract_archive({"tokenizer.json": b"data"}, link)  # the link itself is replaced, not followed
    assert not link.is_symlink() and (link / "tokenizer.json").read_bytes() == b"data"
    assert sorted(p.name for p in outside.iterdir()) == ["victim.json"]
    with pytest.raises(ArchiveError, match="not a safe relative path"):
        extract_archive({"../escape": b"x"}, target)
    assert (target / "tokenizer.json").read_bytes() == b"new"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (extract_archive({"a.json": b"1"}, empty) / "a.json").read_bytes() == b"1"


@pytest.mark.parametrize(
    "members",
    [
        {"a": b"file", "a/b": b"under it"},
        {"a/b": b"under it", "a": b"file"},
        {"a/": b"", "a": b"file"},
        {"d/a": b"x", "d/a/b/c": b"y"},
    ],
)
def test_extract_refuses_colliding_names_before_writing_anything(tmp_path: Path, members: dict[str, bytes]) -> None:
    target = tmp_path / "cache"
    with pytest.raises(ArchiveError, match="collides"):
        extract_archive(members, target)
    assert list(tmp_path.iterdir()) == []


def test_extract_failing_midway_leaves_the_old_tree_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "cache"
    extract_archive({"tokenizer.json": b"old", "tokenizer_config.json": b"{}"}, target)
    real_chmod = os.chmod
    written: list[str] = []

    def failing_chmod(path: str | Path, mode: int) -> None:
        written.append(str(path))
        if len(written) == 2:
            raise OSError("disk full")
        real_chmod(path, mode)

    monkeypatch.setattr(os, "chmod", failing_chmod)
    with pytest.raises(OSError, match="disk full"):
        extract_archive({"tokenizer.json": b"new", "tokenizer_config.json": b'{"x": 1}'}, target)
    monkeypatch.undo()
    assert (target / "tokenizer.json").read_bytes() == b"old" and (target / "tokenizer_config.json").read_bytes() == b"{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_concurrent_extracts_into_one_directory_leave_one_whole_tree(tmp_path: Path) -> None:
    target = tmp_path / "cache"
    trees = [{f"f{i}.json": bytes([k]) * 100 for i in range(8)} for k in range(6)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        for future in [pool.submit(extract_archive, tree, target) for tree in trees]:
            future.result()
    contents = {p.name: p.read_bytes() for p in target.iterdir()}
    assert contents in trees
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
