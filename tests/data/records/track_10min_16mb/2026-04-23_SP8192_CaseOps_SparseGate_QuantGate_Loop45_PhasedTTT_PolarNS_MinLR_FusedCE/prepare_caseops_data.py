"""Prepare CaseOps-tokenized FineWeb shards + per-token byte sidecar.

CaseOps (``lossless_caps_caseops_v1``) is a bijective, character-level text
transform that introduces four operator tokens in place of explicit
capitalization: TITLE, ALLCAPS, CAPNEXT, ESC. The transform is fully
reversible — no information is lost relative to the untransformed UTF-8
text, so BPB stays computable on TRUE byte counts.

Forward pipeline:
  1. Read the canonical FineWeb-10B doc stream (``docs_selected.jsonl``
     produced by ``data/download_hf_docs_and_tokenize.py`` in the root repo).
  2. Apply ``encode_lossless_caps_v2`` (the caseops_v1 alias) to each doc.
  3. Tokenize with the shipped SP model
     ``tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model``
     (reserves TITLE/ALLCAPS/CAPNEXT/ESC + sentinel as user_defined_symbols).
  4. Write uint16 train/val shards (``fineweb_{train,val}_XXXXXX.bin``).
  5. For the VAL stream only, emit per-token byte sidecar shards
     (``fineweb_val_bytes_XXXXXX.bin``, uint16 parallel arrays) that record
     each token's ORIGINAL pre-transform UTF-8 byte count. BPB is computed
     from these canonical bytes so the score is on the untransformed text
     (not the transformed representation).

Output layout — matches what ``train_gpt.py`` expects under
``DATA_DIR=./data`` with ``CASEOPS_ENABLED=1``:

    data/datasets/fineweb10B_sp8192_caseops/datasets/
      tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model
      datasets/fineweb10B_sp8192_lossless_caps_caseops_v1_reserved/
        fineweb_train_000000.bin
        fineweb_train_000001.bin
        ...
        fineweb_val_000000.bin
        fineweb_val_bytes_000000.bin

Usage:

    python3 prepare_caseops_data.py \\
        --docs ./fineweb10B_raw/docs_selected.jsonl \\
        --out  ./data/datasets/fineweb10B_sp8192_caseops/datasets \\
        --sp   ./tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model

Requirements: sentencepiece, numpy. CPU-only. Runs once; reused across seeds.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import struct
import sys

import numpy as np
import sentencepiece as spm

# Local import — lossless_caps.py ships next to this script.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from lossless_caps import encode_lossless_caps_v2  # noqa: E402


SHARD_MAGIC = 20240520
SHARD_VERSION = 1
SHARD_TOKENS = 10_000_000  # tokens per shard — matches the main pipeline
# BOS sentinel (matches canonical data/download_hf_docs_and_tokenize.py). The SP
# tokenizer's BOS_ID=1 is among the reserved IDs 0..7, so sp.encode() can't
# emit it organically — it must be prepended by the prep script. train_gpt.py's
# phased TTT eval path (_find_docs, _loss_bpb_from_sums) relies on BOS
# boundaries and divides by zero on BOS-less shards; the training loader has a
# fallback in _init_shard but TTT does not. This was the bug flagged on
# PR-1779 / patched on PR-1736 (d7263a3) and PR-1769 (fe7c309).
BOS_ID = 1


def _write_shard(out_path: pathlib.Path, arr: np.ndarray) -> None:
    """Write a uint16 shard in the standard header-prefixed format."""
    assert arr.dtype == np.uint16
    header = np.zeros(256, dtype=np.int32)
    header[0] = SHARD_MAGIC
    header[1] = SHARD_VERSION
    header[2] = int(arr.size)
    with out_path.open("wb") as fh:
        fh.write(header.tobytes())
        fh.write(arr.tobytes())


def _iter_docs(docs_path: pathlib.Path):
    """Yield doc strings from a jsonl file (one json object per line)."""
    with docs_path.open("r", encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            obj = json.loads(line)
            # Support both {"text": ...} and raw strings.
            yield obj["text"] if isinstance(obj, dict) else obj


def _token_original_byte_counts(
    sp: spm.SentencePieceProcessor,
    original_text: str,
    transformed_text: str,
) -> np.ndarray:
    """Compute per-token canonical (pre-transform) UTF-8 byte counts.

    The tokenizer runs on the TRANSFORMED text (so operator tokens exist in
    the vocabulary), but BPB must be scored on the ORIGINAL byte stream.
    We tokenize the transformed text, then walk each token's surface form
    through the decoder to recover the pre-transform substring, and count
    the UTF-8 bytes of that.

    This is an APPROXIMATION — it assumes every token maps cleanly back to
    a contiguous original substring. For caseops_v1 (which is character-
    level and bijective) this holds exactly, because operator tokens
    correspond to positions in the original string where the case was
    derived from surrounding letters rather than materialised bytes.
    """
    # Re-encode via the SP model and get pieces (surface strings with the
    # leading ▁ preserved, as in the BPE vocabulary).
    piece_ids = sp.encode(transformed_text, out_type=int)
    pieces = [sp.id_to_piece(int(pid)) for pid in piece_ids]
    # Walk pieces and match against the transformed text to find byte spans.
    counts = np.empty(len(piece_ids), dtype=np.uint16)
    cursor_t = 0
    cursor_o = 0
    from lossless_caps import decode_lossless_caps_v2 as _decode
    for i, piece in enumerate(pieces):
        # SentencePiece uses ▁ as the whitespace marker.
        surface = piece.replace("\u2581", " ")
        span = transformed_text[cursor_t:cursor_t + len(surface)]
        cursor_t += len(span)
        # Decode just this span to find the original bytes it came from.
        try:
            decoded_prefix = _decode(transformed_text[:cursor_t])
            original_bytes = len(decoded_prefix.encode("utf-8")) - cursor_o
            cursor_o += original_bytes
        except Exception:
            # Fall back to counting the transformed surface.
            original_bytes = len(span.encode("utf-8"))
        counts[i] = max(0, min(65535, original_bytes))
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", required=True, type=pathlib.Path, help="Path to docs_selected.jsonl")
    ap.add_argument("--out",  required=True, type=pathlib.Path, help="Output datasets dir")
    ap.add_argument("--sp",   required=True, type=pathlib.Path, help="Path to CaseOps SP model")
    ap.add_argument("--val-docs", type=int, default=10_000, help="Validation docs count")
    args = ap.parse_args()

    sp = spm.SentencePieceProcessor(model_file=str(args.sp))
    print(f"loaded sp: vocab={sp.vocab_size()}", flush=True)

    train_out = args.out / "datasets" / "fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"
    train_out.mkdir(parents=True, exist_ok=True)

    val_buf_tokens: list[int] = []
    val_buf_bytes: list[int] = []
    train_buf: list[int] = []
    val_written = 0
    train_written = 0
    n_docs = 0

    for text in _iter_docs(args.docs):
        transformed = encode_lossless_caps_v2(text)
        # Prepend BOS so train_gpt.py's _find_docs / phased-TTT path can locate
        # document boundaries. The byte sidecar gets a 0 at the BOS position —
        # BOS contributes zero original bytes, so BPB is unchanged.
        token_ids = [BOS_ID] + sp.encode(transformed, out_type=int)
        if n_docs < args.val_docs:
            # Validation doc — also compute byte sidecar
            byte_counts = _token_original_byte_counts(sp, text, transformed)
            val_buf_tokens.extend(token_ids)
            val_buf_bytes.append(0)  # BOS = 0 original bytes
            val_buf_bytes.extend(int(b) for b in byte_counts[: len(token_ids) - 1])
            if len(val_buf_tokens) >= SHARD_TOKENS:
                _write_shard(train_out / f"fineweb_val_{val_written:06d}.bin",
                             np.array(val_buf_tokens[:SHARD_TOKENS], dtype=np.uint16))
                _write_shard(train_out / f"fineweb_val_bytes_{val_written:06d}.bin",
                             np.array(val_buf_bytes[:SHARD_TOKENS], dtype=np.uint16))
                val_buf_tokens = val_buf_tokens[SHARD_TOKENS:]
                val_buf_bytes = val_buf_bytes[SHARD_TOKENS:]
                val_written += 1
        else:
            train_buf.extend(token_ids)
            if len(train_buf) >= SHARD_TOKENS:
                _write_shard(train_out / f"fineweb_train_{train_written:06d}.bin",
                             np.array(train_buf[:SHARD_TOKENS], dtype=np.uint16))
                train_buf = train_buf[SHARD_TOKENS:]
                train_written += 1
        n_docs += 1
        if n_docs % 10_000 == 0:
            print(f"  processed {n_docs} docs  train_shards={train_written}  val_shards={val_written}", flush=True)

    # Flush tail buffers into final (possibly short) shards.
    if val_buf_tokens:
        _write_shard(train_out / f"fineweb_val_{val_written:06d}.bin",
                     np.array(val_buf_tokens, dtype=np.uint16))
        _write_shard(train_out / f"fineweb_val_bytes_{val_written:06d}.bin",
                     np.array(val_buf_bytes, dtype=np.uint16))
    if train_buf:
        _write_shard(train_out / f"fineweb_train_{train_written:06d}.bin",
                     np.array(train_buf, dtype=np.uint16))

    print(f"done. docs={n_docs} train_shards={train_written + (1 if train_buf else 0)} val_shards={val_written + (1 if val_buf_tokens else 0)}")


if __name__ == "__main__":
    main()
