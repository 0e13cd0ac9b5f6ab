import struct
import zlib

import pytest

from licbench.coding.container import (
    Bitstream, decode_container, encode_container, read_bitstream, write_bitstream,
)
from licbench.errors import FormatError

BS = Bitstream(arch="mbt2018-mean", model_id=bytes(range(8)), height=512, width=768,
               pad_multiple=64, shape=(8, 12), streams=(b"\x01\x02\x03" * 50, b"zz"))


def test_round_trip_through_a_file(tmp_path):
    n = write_bitstream(tmp_path / "a.lic", BS)
    assert n == (tmp_path / "a.lic").stat().st_size
    assert read_bitstream(tmp_path / "a.lic") == BS
    assert [p.name for p in tmp_path.iterdir()] == ["a.lic"]


def test_layout_starts_with_magic_and_version():
    data = encode_container(BS)
    assert data[:5] == b"LICB\x01"
    assert data.endswith(BS.streams[0] + BS.streams[1])


@pytest.mark.parametrize("cut", [0, 3, 10, 40, -1])
def test_truncated_files_are_refused(cut):
    data = encode_container(BS)
    with pytest.raises(FormatError, match="truncated"):
        decode_container(data[:cut] if cut else b"", "x.lic")


def test_trailing_garbage_is_refused():
    with pytest.raises(FormatError, match="2 trailing bytes"):
        decode_container(encode_container(BS) + b"!!", "x.lic")


def test_bad_magic():
    with pytest.raises(FormatError, match="x.lic: not a licbench bitstream"):
        decode_container(b"PNG\x00" + encode_container(BS)[4:], "x.lic")


def test_newer_version_is_named():
    data = bytearray(encode_container(BS))
    data[4] = 2
    with pytest.raises(FormatError, match="format version 2 is newer"):
        decode_container(bytes(data), "x.lic")


def test_flipped_payload_bit_fails_the_stream_crc():
    data = bytearray(encode_container(BS))
    data[-1] ^= 0x10
    with pytest.raises(FormatError, match="stream 1 checksum mismatch"):
        decode_container(bytes(data), "x.lic")


def test_flipped_header_bit_fails_the_header_crc():
    data = bytearray(encode_container(BS))
    data[25] ^= 0x01  # inside the image size
    with pytest.raises(FormatError, match="header checksum mismatch"):
        decode_container(bytes(data), "x.lic")


def test_absurd_sizes_in_a_consistent_header_are_refused():
    # A header whose CRC is right but whose size is absurd: still refused.
    data = bytearray(encode_container(BS))
    start = 4 + 3 + len(BS.arch) + 8
    data[start:start + 4] = struct.pack(">I", 10**9)
    header_end = len(data) - sum(len(s) for s in BS.streams) - 4
    data[header_end:header_end + 4] = struct.pack(">I", zlib.crc32(bytes(data[:header_end])))
    with pytest.raises(FormatError, match="invalid image size"):
        decode_container(bytes(data), "x.lic")


def test_unreadable_file_is_a_format_error(tmp_path):
    with pytest.raises(FormatError, match="cannot read"):
        read_bitstream(tmp_path / "none.lic")
