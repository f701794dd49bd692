"""Table directories anywhere on disk: listed by chain, checked before use, refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from core.errors import TableMismatchError
from core.table_dirs import check_tables_for, find_table_directories
from core.tables import MANIFEST_PATH, read_meta, read_tables
from core.workflows.tables import load_traced

SHIPPED = MANIFEST_PATH.parent


def digest_of(name: str) -> str:
    """The chain digest of a registry model, traced now (not read from any table)."""
    return load_traced(name)[2].digest()


def test_a_copy_of_tables_of_this_chain_is_read(tmp_path: Path) -> None:
    copy = tmp_path / "tables"
    shutil.copytree(SHIPPED / "digits_resnet", copy)
    tables = check_tables_for(copy, digest_of("digits_resnet"))
    assert tables.entries == read_tables(SHIPPED / "digits_resnet").entries


def test_tables_of_another_network_name_both_digests(tmp_path: Path) -> None:
    mine = digest_of("digits_resnet")
    theirs = read_meta(SHIPPED / "digits_mobilenet")["chain_digest"]
    with pytest.raises(TableMismatchError) as caught:
        check_tables_for(SHIPPED / "digits_mobilenet", mine)
    message = str(caught.value)
    assert "holds tables of another network" in message and "made for digits_mobilenet" in message
    assert theirs in message and mine in message and "\n" not in message


@pytest.mark.parametrize(
    "meta, words",
    [
        ("not json", "cannot be read as a JSON object"),
        ("[1, 2]", "cannot be read as a JSON object"),
        ("{}", "records no chain digest"),
    ],
)
def test_a_meta_json_that_says_nothing_usable_is_refused(
    tmp_path: Path, meta: str, words: str
) -> None:
    shutil.copytree(SHIPPED / "digits_resnet", tmp_path / "t")
    (tmp_path / "t" / "meta.json").write_text(meta)
    with pytest.raises(TableMismatchError, match=words):
        check_tables_for(tmp_path / "t", digest_of("digits_resnet"))


def test_an_edited_table_is_refused_even_when_the_chain_matches(tmp_path: Path) -> None:
    copy = tmp_path / "t"
    shutil.copytree(SHIPPED / "digits_resnet", copy)
    with (copy / "latency.csv").open("a") as handle:
        handle.write("0,1,3,false,1,[1],1.0,0.0\n")
    with pytest.raises(TableMismatchError):
        check_tables_for(copy, digest_of("digits_resnet"))


@pytest.mark.parametrize("text", ["", "   "])
def test_no_path_asks_for_one(text: str) -> None:
    with pytest.raises(TableMismatchError, match="give the path of a table directory"):
        check_tables_for(text, "0123456789abcdef")


def test_a_path_no_system_can_open_is_refused_in_one_line() -> None:
    with pytest.raises(TableMismatchError, match="cannot be read"):
        check_tables_for("runs/a\x00b", "0123456789abcdef")


def test_only_directories_of_the_chain_are_found(tmp_path: Path) -> None:
    digest = digest_of("digits_resnet")
    shutil.copytree(SHIPPED / "digits_resnet", tmp_path / "runs" / "a" / "tables")
    shutil.copytree(SHIPPED / "digits_mobilenet", tmp_path / "runs" / "b")  # another chain
    shutil.copytree(SHIPPED / "digits_resnet", tmp_path / "runs" / ".hidden" / "t")
    shutil.copytree(SHIPPED / "digits_resnet", tmp_path / "runs" / "1" / "2" / "3" / "4" / "5")
    partial = tmp_path / "runs" / "c"  # profile only: no importance table yet
    shutil.copytree(SHIPPED / "digits_resnet", partial)
    (partial / "importance.csv").unlink()
    (tmp_path / "runs" / "d").mkdir()
    (tmp_path / "runs" / "d" / "meta.json").write_text(json.dumps({"chain_digest": digest}))
    found = find_table_directories([tmp_path / "runs", tmp_path / "nowhere"], digest)
    assert [d.path for d in found] == [(tmp_path / "runs" / "a" / "tables").resolve()]
    assert found[0].model == "digits_resnet" and found[0].importance_mode == "finetune"
    deeper = find_table_directories([tmp_path / "runs"], digest, depth=5)
    assert len(deeper) == 2  # the deep one too; the hidden one never
