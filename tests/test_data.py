"""`pgolf data prepare` and the shard format: exact header bytes, corrupt files refused, deterministic builds,
BOS per document, and the bundled tiny dataset readable and decodable with its own tokenizer."""
from __future__ import annotations

import hashlib
import json
import struct
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from model.data import prepare, read_shard, read_texts, stdlib_docstrings, write_shard
from results.errors import PgolfError
from runner.cli import main

TINY = Path(__file__).resolve().parents[1] / "model" / "data" / "tiny"
STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="module")
def email_docs() -> list[str]:
    """Real prose, small: the docstrings and comments of the stdlib `email` package (~130k characters)."""
    return stdlib_docstrings(STDLIB / "email")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory, email_docs) -> Path:
    """A folder with a .jsonl (one document per line) and a .txt (documents as blank-line separated blocks)."""
    d = tmp_path_factory.mktemp("corpus")
    half = len(email_docs) // 2
    (d / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in email_docs[:half]))
    blocks = [" ".join(t.split()) for t in email_docs[half:]]  # one line each, so one block = one document
    (d / "sub").mkdir()
    (d / "sub" / "b.txt").write_text("\n\n".join(blocks) + "\n")
    (d / "sub" / "ignored.bin").write_bytes(b"\x00\xff")
    return d


def _prepare_cli(out: Path, *extra: str) -> int:
    return main(["data", "prepare", "--out", str(out), *extra])


def _documents(tokens: np.ndarray, bos: int) -> list[np.ndarray]:
    starts = np.flatnonzero(tokens == bos)
    return [tokens[a:b] for a, b in zip(starts, list(starts[1:]) + [len(tokens)])]


def _split_tokens(out: Path, split: str) -> np.ndarray:
    return np.concatenate([read_shard(p) for p in sorted(out.glob(f"fineweb_{split}_*.bin"))])


# --------------------------------------------------------------------------- shard format

def test_shard_roundtrip_header_bytes_exact(tmp_path):
    toks = np.array([1, 0, 65535, 258, 1023, 7], dtype=np.int64)
    path = tmp_path / "fineweb_train_000000.bin"
    write_shard(path, toks)
    raw = path.read_bytes()
    assert len(raw) == 1024 + 2 * len(toks)
    assert raw[:12] == struct.pack("<3i", 20240520, 1, len(toks))
    assert raw[12:1024] == b"\x00" * 1012
    assert raw[1024:] == struct.pack(f"<{len(toks)}H", *toks.tolist())
    back = read_shard(path)
    assert back.dtype == np.uint16 and back.tolist() == toks.tolist()
    write_shard(path, [])
    assert read_shard(path).size == 0


def test_write_shard_rejects_ids_outside_uint16(tmp_path):
    with pytest.raises(PgolfError, match="65535"):
        write_shard(tmp_path / "x.bin", [1, 70000])
    assert not list(tmp_path.iterdir())  # nothing half-written


@pytest.mark.parametrize("damage,needle", [
    (lambda b: struct.pack("<i", 12345) + b[4:], "bad magic 12345"),
    (lambda b: b[:4] + struct.pack("<i", 2) + b[8:], "unsupported shard version 2"),
    (lambda b: b[:-2], "truncated or corrupt"),
    (lambda b: b[:8] + struct.pack("<i", 99) + b[12:], "header says 99 tokens"),
    (lambda b: b[:500], "shorter than the 1024-byte shard header"),
])
def test_corrupted_shard_rejected_with_clear_error(tmp_path, damage, needle):
    path = tmp_path / "fineweb_val_000000.bin"
    write_shard(path, np.arange(10))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(PgolfError) as e:
        read_shard(path)
    assert needle in str(e.value) and str(path) in str(e.value)
    with pytest.raises(PgolfError, match="not found"):
        read_shard(tmp_path / "missing.bin")


# --------------------------------------------------------------------------- text sources

def test_read_texts_jsonl_lines_and_txt_blocks(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "first doc"}\n\n{"text": "second\\n\\ndoc"}\n')
    (tmp_path / "e.txt").write_text("para one\nstill one\n\n\n  \npara two\n")
    assert read_texts([tmp_path]) == ["first doc", "second\n\ndoc", "para one\nstill one", "para two"]
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(PgolfError, match=r"bad\.jsonl:2: invalid JSON"):
        read_texts([tmp_path / "bad.jsonl"])
    (tmp_path / "nofield.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(PgolfError, match=r"nofield\.jsonl:1: .*\"text\" field"):
        read_texts([tmp_path / "nofield.jsonl"])


def test_stdlib_docstrings_deterministic_and_deduplicated():
    a = stdlib_docstrings(STDLIB / "json")
    assert a == stdlib_docstrings(STDLIB / "json")
    assert len(a) == len(set(a)) and all(t == t.strip() and t for t in a)
    assert a[0].startswith("JSON (JavaScript Object Notation)")  # json/__init__.py's module docstring comes first
    assert stdlib_docstrings(STDLIB / "json", comments=False) == [t for t in a if t in
                                                                   set(stdlib_docstrings(STDLIB / "json", comments=False))]


# --------------------------------------------------------------------------- prepare end to end

def test_prepare_cli_end_to_end(tmp_path, corpus_dir, email_docs, capsys):
    out = tmp_path / "ds"
    (out).mkdir()
    write_shard(out / "fineweb_train_000009.bin", [1, 2, 3])  # stale shard from an earlier build: removed
    assert _prepare_cli(out, "--text", str(corpus_dir), "--vocab-size", "512", "--shard-tokens", "20000") == 0
    printed = capsys.readouterr().out
    assert "train:" in printed and "val:" in printed

    m = json.loads((out / "manifest.json").read_text())
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    assert sp.vocab_size() == 512 == m["tokenizer"]["vocab_size"]
    assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<s>", "</s>", "<unk>"]
    assert sp.bos_id() == 1 and sp.is_byte(4) and sp.id_to_piece(259) == "<0xFF>"
    assert m["tokenizer"]["sha256"] == hashlib.sha256((out / "tokenizer.model").read_bytes()).hexdigest()
    assert m["source"] == {"kind": "files", "paths": [str(corpus_dir)], "max_chars": None}

    files = sorted(p.name for p in out.glob("fineweb_*.bin"))
    assert files == sorted(s["file"] for s in m["shards"]) and "fineweb_train_000009.bin" not in files
    assert "fineweb_val_000000.bin" in files and "fineweb_train_000001.bin" in files  # > 20k train tokens
    for s in m["shards"]:
        toks = read_shard(out / s["file"])
        assert 0 < len(toks) <= 20000 and len(toks) == s["tokens"] and int(toks.max()) < 512
        assert s["sha256"] == hashlib.sha256((out / s["file"]).read_bytes()).hexdigest()

    originals = {sp.normalize(t).replace("\u2581", " ") for t in email_docs}
    for split in ("train", "val"):
        toks = _split_tokens(out, split)
        assert len(toks) == m["tokens"][split] and toks[0] == 1  # the stream starts with a document's BOS
        docs = _documents(toks, 1)
        assert len(docs) == m["documents"][split]  # exactly one BOS per document, never inside one
        assert all(len(d) > 1 for d in docs)
        decoded = [sp.decode(d[1:].tolist()) for d in docs]
        assert set(decoded) <= originals  # each document decodes back to its (normalised) text
    assert m["documents"]["val"] == -(-len(email_docs) // 10)
    assert m["documents"]["train"] + m["documents"]["val"] == len(email_docs)


def test_prepare_is_deterministic(tmp_path, email_docs):
    a, b = tmp_path / "a", tmp_path / "b"
    prepare(email_docs, a, vocab_size=600, val_fraction=0.2, shard_tokens=15000)
    prepare(list(email_docs), b, vocab_size=600, val_fraction=0.2, shard_tokens=15000)
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and len(names) >= 4
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


def test_max_chars_caps_the_corpus(tmp_path, corpus_dir):
    out = tmp_path / "cap"
    assert _prepare_cli(out, "--text", str(corpus_dir), "--vocab-size", "400", "--max-chars", "40000") == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["chars"]["train"] + m["chars"]["val"] <= 40000 and m["source"]["max_chars"] == 40000


def test_bad_input_gives_one_clear_line(tmp_path, capsys):
    def err(*argv) -> str:
        assert _prepare_cli(tmp_path / "o", *argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pgolf data: error:")
        return lines[0]

    assert "nope.txt: text path not found" in err("--text", str(tmp_path / "nope.txt"))
    (tmp_path / "blank.txt").write_text("\n\n   \n")
    assert "corpus is empty" in err("--text", str(tmp_path / "blank.txt"))
    (tmp_path / "small.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in stdlib_docstrings(STDLIB / "json")))
    assert "too small for --vocab-size 8192" in err("--text", str(tmp_path / "small.jsonl"), "--vocab-size", "8192")
    assert "out of range" in err("--text", str(tmp_path / "small.jsonl"), "--vocab-size", "70000")
    assert "--val-fraction" in err("--text", str(tmp_path / "small.jsonl"), "--val-fraction", "1.5")
    (tmp_path / "one.txt").write_text("a single document\n")
    assert "cannot split 1 documents" in err("--text", str(tmp_path / "one.txt"))
    (tmp_path / "empty_dir").mkdir()
    assert "folder holds no" in err("--text", str(tmp_path / "empty_dir"))


# --------------------------------------------------------------------------- the bundled tiny dataset

def test_bundled_tiny_dataset_is_readable_and_decodes():
    m = json.loads((TINY / "manifest.json").read_text())
    sp = spm.SentencePieceProcessor(model_file=str(TINY / "tokenizer.model"))
    assert sp.vocab_size() == 1024 and [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<s>", "</s>", "<unk>"]
    assert all(sp.is_byte(i) for i in range(4, 260))
    total = sum(p.stat().st_size for p in TINY.iterdir())
    assert total < 12_000_000
    for s in m["shards"]:
        assert hashlib.sha256((TINY / s["file"]).read_bytes()).hexdigest() == s["sha256"], s["file"]
    for split in ("train", "val"):
        toks = _split_tokens(TINY, split)
        assert len(toks) == m["tokens"][split] and toks[0] == 1 and int(toks.max()) < 1024
        assert int((toks == 1).sum()) == m["documents"][split]
    assert 2_000_000 <= m["tokens"]["train"] <= 4_000_000 and 100_000 <= m["tokens"]["val"] <= 250_000
    val = _split_tokens(TINY, "val")
    docs = _documents(val, 1)[:50]
    texts = [sp.decode(d[1:].tolist()) for d in docs]
    assert all(t and "<s>" not in t for t in texts)
    assert [sp.encode(t) for t in texts] == [d[1:].tolist() for d in docs]  # decode is exact: it re-encodes
    joined = " ".join(texts)
    assert sum(c.isascii() and (c.isalpha() or c == " ") for c in joined) > 0.7 * len(joined)  # English prose


def test_vocab_8192_on_a_big_enough_corpus(tmp_path):
    """The sp8192 size of the records trains when there is enough text (here: the tiny val split, ~0.5 MB)."""
    sp = spm.SentencePieceProcessor(model_file=str(TINY / "tokenizer.model"))
    texts = [sp.decode(d[1:].tolist()) for d in _documents(_split_tokens(TINY, "val"), 1)]
    m = prepare(texts, tmp_path / "sp8192", vocab_size=8192, val_fraction=0.05)
    assert spm.SentencePieceProcessor(model_file=str(tmp_path / "sp8192" / "tokenizer.model")).vocab_size() == 8192
    assert int(_split_tokens(tmp_path / "sp8192", "train").max()) < 8192 and m["tokens"]["val"] > 0


def test_out_must_be_a_folder(tmp_path, capsys):
    (tmp_path / "c.txt").write_text("one document\n\nanother document\n")
    (tmp_path / "file").write_text("x")
    assert _prepare_cli(tmp_path / "file", "--text", str(tmp_path / "c.txt"), "--vocab-size", "300") == 2
    assert "exists and is not a folder" in capsys.readouterr().err


def test_prepare_from_python_source_tree_with_tokenizer_cap(tmp_path):
    """--python-src harvests docstrings of any .py tree; --tokenizer-max-chars trains on a prefix only."""
    from runner.cli import main
    src = tmp_path / "pkg"
    src.mkdir()
    for i in range(60):
        (src / f"m{i:02d}.py").write_text(
            f'"""Module {i} explains how the gradient of document {i} flows through layer {i % 7}."""\n'
            f'def f{i}():\n    """Return the {i}th answer, computed carefully and cached for later use."""\n')
    out = tmp_path / "out"
    rc = main(["data", "prepare", "--python-src", str(src), "--out", str(out), "--vocab-size", "300",
               "--tokenizer-max-chars", "3000"])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["documents"]["train"] + manifest["documents"]["val"] == 120
    assert manifest["source"]["python_src"] == [str(src)]


def test_python_src_must_be_a_folder(tmp_path, capsys):
    from runner.cli import main
    assert main(["data", "prepare", "--python-src", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "--python-src" in capsys.readouterr().err
