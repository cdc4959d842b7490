"""`python -m bench.trained_model [--model DIR]`: how good the trained checkpoint is (held-out loss
vs unigram, parseable greedy continuations of held-out function headers, MTP first-draft
acceptance teacher-forced and on the model's own generations; see engine/training/evaluate.py).
Prints the report and writes bench/results/trained_model.json."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from engine.training.checkpoint import read_training_record
from engine.training.corpus import load_corpus
from engine.training.evaluate import evaluate
from engine.training.shipped import shipped_or_cached

RESULTS = Path(__file__).parent / "results" / "trained_model.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, default=None, help="checkpoint dir (default: the shipped trained model)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    model = args.model or shipped_or_cached()
    corpus = load_corpus()
    record = read_training_record(model) or {}
    print(corpus.describe())
    if record.get("corpus_sha256") not in (None, corpus.sha256):
        print(
            f"note: the model was trained on corpus {record['corpus_sha256'][:12]} (Python {record['corpus_python']})"
        )
    result = evaluate(model, corpus)
    print(result.report())
    summary = {
        "model": str(model),
        "corpus_sha256": corpus.sha256,
        "trained_on_corpus_sha256": record.get("corpus_sha256"),
        "train_steps": record.get("train_config", {}).get("steps"),
        **result.as_dict(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
