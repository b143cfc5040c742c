"""llama.cpp's split-file names, read and written by the one pattern in llamactl.gguf_split."""

from __future__ import annotations

from pathlib import Path

from llamactl.gguf_split import SplitName, parse_split_name, part_name, part_paths, split_parts, unsplit_stem


def test_split_names_round_trip():
    assert parse_split_name("Llama-4-Scout-Q8_0-00002-of-00003.gguf") == SplitName("Llama-4-Scout-Q8_0", 2, 3)
    assert parse_split_name("dir/m-00001-of-00002.GGUF") == SplitName("dir/m", 1, 2, ".GGUF")
    assert parse_split_name("m.gguf") is None and parse_split_name("m-1-of-2.gguf") is None
    assert part_name("m", 7, 12) == "m-00007-of-00012.gguf"
    assert [p.name for p in part_paths(Path("/x/m.gguf"), 2)] == ["m-00001-of-00002.gguf", "m-00002-of-00002.gguf"]
    assert split_parts(Path("/x/m-00001-of-00002.GGUF")) == [Path("/x/m-00001-of-00002.GGUF"),
                                                             Path("/x/m-00002-of-00002.GGUF")]
    assert split_parts(Path("/x/m.gguf")) == [Path("/x/m.gguf")]
    assert unsplit_stem("m-00001-of-00002.gguf") == unsplit_stem("m.gguf") == "m"
