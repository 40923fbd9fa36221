"""Build the shipped corpus ``data/tiny-literary`` from the offline literary corpus (deterministic, about 5 s).

    python data/make_tiny_corpus.py --source /work/shared/data --out data/tiny-literary

Reads ``<source>/literary-docs/{train,valid,test}.jsonl.gz`` and keeps, from each split and each public-domain source
(``kjv``, ``shakespeare``, ``jargon``; never ``fortunes``, whose entries are of mixed provenance), every
`DOCUMENT_STRIDE`-th document in file order, starting with the first. Splits stay disjoint because they are
sub-splits of disjoint splits, made of whole documents. Writes, per split:

- ``<split>.jsonl.gz``: the documents as they are (``text``, ``source``, ``title``), for the BPE track;
- ``<split>.txt.gz``: their text8 normalisation joined by one space, one line, no newline, for the character track.

Gzip is written without time stamp or file name, so a rebuild gives byte-identical files. Prints the table of sizes,
md5s and the unigram entropy that ``data/README.md`` records.
"""

import argparse
import gzip
import hashlib
import json
from pathlib import Path

from evaluation.entropy import unigram_entropy
from training.tokenization_char import encode_text8, text8_normalize

SPLITS = ("train", "valid", "test")
PUBLIC_DOMAIN_SOURCES = ("kjv", "shakespeare", "jargon")
DOCUMENT_STRIDE = 5


def read_documents(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def select_documents(documents: list[dict]) -> list[dict]:
    """Every `DOCUMENT_STRIDE`-th document of each public-domain source, sources in `PUBLIC_DOMAIN_SOURCES` order."""
    selected = []
    for source in PUBLIC_DOMAIN_SOURCES:
        selected += [d for d in documents if d["source"] == source][::DOCUMENT_STRIDE]
    return selected


def write_gzip(path: Path, text: str) -> None:
    path.write_bytes(gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0))


def check_normalisation(source_dir: Path) -> None:
    """Our `text8_normalize` must reproduce the shared text8 twin exactly, or the two tracks would hold other text."""
    for split in SPLITS:
        documents = read_documents(source_dir / "literary-docs" / f"{split}.jsonl.gz")
        with gzip.open(source_dir / "literary-text8" / f"{split}.txt.gz", "rt", encoding="utf-8") as f:
            if f.read() != " ".join(text8_normalize(d["text"]) for d in documents):
                raise ValueError(f"text8_normalize does not reproduce literary-text8/{split}.txt.gz")


def build_split(source_dir: Path, out_dir: Path, split: str) -> dict:
    documents = select_documents(read_documents(source_dir / "literary-docs" / f"{split}.jsonl.gz"))
    stream = " ".join(text8_normalize(d["text"]) for d in documents)
    write_gzip(out_dir / f"{split}.jsonl.gz", "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in documents))
    write_gzip(out_dir / f"{split}.txt.gz", stream)
    return {
        "documents": len(documents),
        "titles": [d["title"] for d in documents if d["source"] != "jargon"],
        "jargon_parts": [d["title"].rsplit(" ", 1)[-1] for d in documents if d["source"] == "jargon"],
        "raw_characters": sum(len(d["text"]) for d in documents),
        "text8_characters": len(stream),
        "unigram_entropy_bits": unigram_entropy(encode_text8(stream), base=2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=Path("/work/shared/data"),
                        help="folder holding literary-docs/ and literary-text8/")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "tiny-literary",
                        help="output folder (created)")
    args = parser.parse_args()
    check_normalisation(args.source)
    args.out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        print(split, json.dumps(build_split(args.source, args.out, split)))
    for path in sorted(args.out.iterdir()):
        if path.suffix == ".gz":
            print(f"| `{path.name}` | {path.stat().st_size:,} | `{hashlib.md5(path.read_bytes()).hexdigest()}` |")


if __name__ == "__main__":
    main()
