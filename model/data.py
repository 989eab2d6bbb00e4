"""`pgolf data prepare`: local text -> sentencepiece BPE tokenizer -> official-format token shards.

The challenge ships FineWeb as shards of uint16 tokens (header of 256 int32: magic 20240520, version 1,
token count; tokens from byte 1024; every document starts with BOS) and sentencepiece BPE tokenizers
trained with byte fallback. This module writes the same format from text we have offline, so the
payload, the smoke job and the tests run end to end without downloading anything. The tokenizer
options follow the official `fineweb_*_bpe.model` ones (pad=0, bos=1, eos=2, unk=3, nmt_nfkc, no dummy
prefix, split digits, byte fallback); training runs on one thread with every sentence so that the same
input always gives byte-identical output.
"""
from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import sys
import sysconfig
import tempfile
import tokenize
from pathlib import Path
from typing import Iterable

import numpy as np

from results.errors import PgolfError

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAX_VOCAB = 1 << 16          # uint16 tokens
SPLIT_SEED = 20240520        # fixed permutation of documents before the val/train split
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".jsonl")

# Official fineweb tokenizer options, plus what makes training reproducible byte for byte.
SP_OPTIONS = dict(
    model_type="bpe",
    character_coverage=0.999,
    byte_fallback=True,
    split_digits=True,
    normalization_rule_name="nmt_nfkc",
    add_dummy_prefix=False,
    pad_id=0, bos_id=1, eos_id=2, unk_id=3,
    hard_vocab_limit=False,
    num_threads=1,
    input_sentence_size=0,          # use every sentence: no random sampling
    shuffle_input_sentence=False,
    max_sentence_length=1 << 16,    # bytes; longer documents are left out of tokenizer training only
    minloglevel=2,
)


# --------------------------------------------------------------------------- shard format

def write_shard(path: str | os.PathLike, tokens) -> None:
    """Write one official-format shard atomically (temp file + rename)."""
    toks = np.asarray(tokens)
    if toks.ndim != 1:
        raise PgolfError(f"{path}: tokens must be a 1-D sequence, got shape {toks.shape}")
    if toks.size >= 2**31:
        raise PgolfError(f"{path}: {toks.size} tokens do not fit the header's int32 count; use smaller shards")
    if toks.size and (int(toks.min()) < 0 or int(toks.max()) >= MAX_VOCAB):
        raise PgolfError(f"{path}: token ids must be in [0, 65535] for uint16 shards")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = SHARD_MAGIC, SHARD_VERSION, toks.size
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header.tobytes())
            f.write(toks.astype("<u2", copy=False).tobytes())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_shard(path: str | os.PathLike) -> np.ndarray:
    """Read one shard's tokens (uint16), checking magic, version and length against the file size."""
    path = Path(path)
    if not path.is_file():
        raise PgolfError(f"{path}: shard not found")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise PgolfError(f"{path}: {size} bytes is shorter than the 1024-byte shard header; rebuild it with `pgolf data prepare`")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if int(header[0]) != SHARD_MAGIC:
        raise PgolfError(f"{path}: bad magic {int(header[0])} (expected {SHARD_MAGIC}); not an official-format shard")
    if int(header[1]) != SHARD_VERSION:
        raise PgolfError(f"{path}: unsupported shard version {int(header[1])} (expected {SHARD_VERSION})")
    n = int(header[2])
    if n < 0 or size != HEADER_BYTES + 2 * n:
        raise PgolfError(f"{path}: header says {n} tokens but the file holds {(size - HEADER_BYTES) / 2:g}; "
                         "the shard is truncated or corrupt, rebuild it")
    return np.fromfile(path, dtype="<u2", count=n, offset=HEADER_BYTES)


# --------------------------------------------------------------------------- text sources

def _stdlib_files(root: str | os.PathLike | None) -> list[Path]:
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__"))
        files += [Path(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _docstrings(source: bytes) -> list[str]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):  # a few stdlib test files hold deliberate syntax errors
        return []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return [d for node in ast.walk(tree) if isinstance(node, kinds) and (d := ast.get_docstring(node))]


def _comment_blocks(source: bytes, min_chars: int = 40) -> list[str]:
    """Runs of comments on consecutive lines, joined: the stdlib's other prose."""
    blocks, cur, last = [], [], -2
    try:
        for tok in tokenize.tokenize(io.BytesIO(source).readline):
            if tok.type != tokenize.COMMENT:
                continue
            if tok.start[0] != last + 1 and cur:
                blocks.append(" ".join(cur))
                cur = []
            text = tok.string.lstrip("#").strip()
            if text:
                cur.append(text)
            last = tok.start[0]
    except (tokenize.TokenError, SyntaxError, UnicodeDecodeError):
        pass
    if cur:
        blocks.append(" ".join(cur))
    return [b for b in blocks if len(b) >= min_chars]


def stdlib_docstrings(root: str | os.PathLike | None = None, comments: bool = True) -> list[str]:
    """Docstrings (and, by default, comment blocks) of the Python standard library, in path order, deduplicated.

    Deterministic for a given Python version: files sorted by relative path, AST walk order, first
    occurrence of each exact text kept. `root` points at another source tree (tests use a small one).
    """
    docs: list[str] = []
    seen: set[str] = set()

    def add(text: str) -> None:
        text = text.replace("\x00", " ").strip()
        if text and text not in seen:
            seen.add(text)
            docs.append(text)

    for path in _stdlib_files(root):
        source = path.read_bytes()
        for d in _docstrings(source):
            add(d)
        if comments:
            for c in _comment_blocks(source):
                add(c)
    if root is None:
        try:  # the language reference topics pydoc shows: plain documentation prose
            from pydoc_data.topics import topics
            for key in sorted(topics):
                add(topics[key])
        except ImportError:
            pass
    return docs


def _docs_from_file(path: Path) -> list[str]:
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PgolfError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); convert it or leave it out") from None
    except OSError as e:
        raise PgolfError(f"{path}: cannot read ({e.strerror}); check the path and its permissions") from None
    if path.suffix == ".jsonl":
        docs = []
        for i, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise PgolfError(f"{path}:{i}: invalid JSON ({e.msg}); each line must be an object with a \"text\" field") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise PgolfError(f"{path}:{i}: each line must be a JSON object with a string \"text\" field")
            docs.append(obj["text"])
        return docs
    # plain text: one document per block of lines separated by blank lines
    blocks, cur = [], []
    for line in raw.splitlines():
        if line.strip():
            cur.append(line)
        elif cur:
            blocks.append("\n".join(cur))
            cur = []
    if cur:
        blocks.append("\n".join(cur))
    return blocks


def read_texts(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Documents from files and folders (folders recursively: *.txt, *.md, *.rst, *.jsonl, sorted)."""
    docs: list[str] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files = sorted((f for f in p.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES),
                           key=lambda f: f.relative_to(p).as_posix())
            if not files:
                raise PgolfError(f"{p}: folder holds no {', '.join(TEXT_SUFFIXES)} files; point --text at text files")
        elif p.is_file():
            files = [p]
        else:
            raise PgolfError(f"{p}: text path not found; pass existing files or folders to --text")
        for f in files:
            docs += _docs_from_file(f)
    return docs


def _clean(docs: Iterable[str], max_chars: int | None) -> list[str]:
    """Strip, drop empty documents, and stop at max_chars characters (the last document cut to fit)."""
    out, total = [], 0
    for d in docs:
        d = d.replace("\x00", " ").strip()
        if not d:
            continue
        if max_chars is not None and total + len(d) > max_chars:
            rest = max_chars - total
            if rest > 0 and d[:rest].strip():
                out.append(d[:rest].strip())
            break
        out.append(d)
        total += len(d)
    return out


# --------------------------------------------------------------------------- tokenizer + shards

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def train_tokenizer(docs: list[str], vocab_size: int) -> bytes:
    """Train the sentencepiece BPE model on `docs`; returns the serialized model."""
    import sentencepiece as spm

    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(docs), model_writer=buf,
                                       vocab_size=vocab_size, **SP_OPTIONS)
    except RuntimeError as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        fix = ("use a larger --vocab-size: the corpus has more distinct characters than that"
               if "required_chars" in msg else "use a smaller --vocab-size or more text")
        raise PgolfError(f"sentencepiece could not train a {vocab_size}-token vocabulary on {len(docs)} documents "
                         f"({msg}); {fix}") from None
    model = buf.getvalue()
    got = spm.SentencePieceProcessor(model_proto=model).vocab_size()
    if got != vocab_size:
        raise PgolfError(f"the corpus is too small for --vocab-size {vocab_size}: sentencepiece found only {got} pieces; "
                         "use a smaller --vocab-size or more text")
    return model


def split_documents(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic split: a fixed permutation of the documents, the first ceil(f*n) go to validation."""
    n = len(docs)
    n_val = int(np.ceil(val_fraction * n))
    if n < 2 or n_val < 1 or n_val >= n:
        raise PgolfError(f"cannot split {n} documents with --val-fraction {val_fraction}: need at least one "
                         "validation and one training document; add text or change --val-fraction")
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    return [docs[i] for i in order[:n_val]], [docs[i] for i in order[n_val:]]


def encode_documents(model: bytes, docs: list[str]) -> np.ndarray:
    """One token stream: BOS then the document's tokens, for every document (no EOS, as the official shards)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model)
    bos = sp.bos_id()
    pieces = sp.encode(docs, out_type=int)
    lengths = [len(p) + 1 for p in pieces]
    out = np.empty(sum(lengths), dtype=np.int64)
    pos = 0
    for p, n in zip(pieces, lengths):
        out[pos] = bos
        out[pos + 1:pos + n] = p
        pos += n
    return out


def _write_split(out: Path, split: str, tokens: np.ndarray, shard_tokens: int) -> list[dict]:
    shards = []
    for i, start in enumerate(range(0, len(tokens), shard_tokens)):
        path = out / f"fineweb_{split}_{i:06d}.bin"
        chunk = tokens[start:start + shard_tokens]
        write_shard(path, chunk)
        shards.append({"file": path.name, "split": split, "tokens": int(len(chunk)), "sha256": _sha256(path)})
    return shards


def prepare(texts: list[str], out: str | os.PathLike, vocab_size: int = 1024, val_fraction: float = 0.1,
            shard_tokens: int = 1_000_000, source: dict | None = None,
            tokenizer_max_chars: int | None = None) -> dict:
    """Tokenizer + shards + manifest.json in `out` from documents `texts`; returns the manifest.

    `tokenizer_max_chars` trains the tokenizer on the first training documents only (sentencepiece
    trains on one thread for reproducibility, so a large corpus needs a cap); every document is encoded."""
    if not 260 < vocab_size <= MAX_VOCAB:
        raise PgolfError(f"--vocab-size {vocab_size} is out of range: byte fallback needs more than 260 pieces "
                         f"and uint16 shards at most {MAX_VOCAB}")
    if not 0 < val_fraction < 1:
        raise PgolfError(f"--val-fraction {val_fraction} must be between 0 and 1 (exclusive)")
    if shard_tokens < 1:
        raise PgolfError(f"--shard-tokens {shard_tokens} must be positive")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PgolfError(f"--out {out}: exists and is not a folder; pick a folder for the tokenizer and shards")
    docs = _clean(texts, None)
    if not docs:
        raise PgolfError("the corpus is empty: no non-blank documents were read; check --text")
    val_docs, train_docs = split_documents(docs, val_fraction)
    model = train_tokenizer(_clean(train_docs, tokenizer_max_chars) if tokenizer_max_chars else train_docs, vocab_size)

    out.mkdir(parents=True, exist_ok=True)
    for stale in sorted(out.glob("fineweb_*_*.bin")):
        stale.unlink()
    tok_path = out / "tokenizer.model"
    fd, tmp = tempfile.mkstemp(prefix=".tokenizer.", dir=out)
    with os.fdopen(fd, "wb") as f:
        f.write(model)
    os.chmod(tmp, 0o644)
    os.replace(tmp, tok_path)

    val = encode_documents(model, val_docs)
    train = encode_documents(model, train_docs)
    shards = _write_split(out, "val", val, shard_tokens) + _write_split(out, "train", train, shard_tokens)
    manifest = {
        "format": {"magic": SHARD_MAGIC, "version": SHARD_VERSION, "header_bytes": HEADER_BYTES, "dtype": "<u2",
                   "bos_per_document": True, "eos": False},
        "tokenizer": {"file": tok_path.name, "sha256": _sha256(tok_path), "vocab_size": vocab_size,
                      "pad_id": 0, "bos_id": 1, "eos_id": 2, "unk_id": 3,
                      "options": {k: v for k, v in SP_OPTIONS.items() if k != "minloglevel"}},
        "source": source or {"kind": "texts"},
        "documents": {"train": len(train_docs), "val": len(val_docs)},
        "chars": {"train": sum(map(len, train_docs)), "val": sum(map(len, val_docs))},
        "tokens": {"train": int(len(train)), "val": int(len(val))},
        "val_fraction": val_fraction,
        "shard_tokens": shard_tokens,
        "split_seed": SPLIT_SEED,
        "shards": shards,
    }
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", dir=out)
    with os.fdopen(fd, "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, out / "manifest.json")
    return manifest


def cmd_data(args) -> int:
    """`pgolf data prepare`: read the text, build everything, print a short summary."""
    if args.data_command != "prepare":
        raise PgolfError(f"unknown data action {args.data_command!r}; use `pgolf data prepare`")
    if args.max_chars is not None and args.max_chars < 1:
        raise PgolfError(f"--max-chars {args.max_chars} must be positive")
    if args.text or args.python_src:
        docs = read_texts(args.text or [])
        for root in args.python_src or []:
            if not Path(root).is_dir():
                raise PgolfError(f"--python-src {root}: not a folder; point it at a tree of .py files")
            docs += stdlib_docstrings(root)
        source = {"kind": "files", "paths": [str(p) for p in args.text or []]}
        if args.python_src:
            source["python_src"] = [str(p) for p in args.python_src]
    else:
        docs = stdlib_docstrings()
        source = {"kind": "stdlib_docstrings", "python": ".".join(map(str, sys.version_info[:3])),
                  "includes": ["docstrings", "comment blocks", "pydoc_data.topics"]}
    source["max_chars"] = args.max_chars
    docs = _clean(docs, args.max_chars)
    m = prepare(docs, args.out, vocab_size=args.vocab_size, val_fraction=args.val_fraction,
                shard_tokens=args.shard_tokens, source=source, tokenizer_max_chars=args.tokenizer_max_chars)
    print(f"tokenizer: {Path(args.out) / 'tokenizer.model'} (vocab {m['tokenizer']['vocab_size']})")
    for split in ("train", "val"):
        n = sum(s["split"] == split for s in m["shards"])
        print(f"{split}: {m['documents'][split]} documents, {m['tokens'][split]} tokens, {n} shard(s)")
    print(f"manifest: {Path(args.out) / 'manifest.json'}")
    return 0
