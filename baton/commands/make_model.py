"""`baton make-model`: write a random-weight checkpoint in the Hugging Face layout."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from engine.make_model import MODEL_TYPES, PRESETS, VARIANTS

    parser = subparsers.add_parser("make-model", help="write a random-weight checkpoint (HF layout)")
    parser.add_argument("--preset", choices=PRESETS, default="tiny")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--model-type", choices=MODEL_TYPES, default="qwen3_next")
    parser.add_argument("--variant", choices=VARIANTS, default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.make_model import make_model

    path = make_model(
        args.out,
        preset=args.preset,
        model_type=args.model_type,
        variant=args.variant,
        seed=args.seed,
        progress=True,
    )
    print(f"wrote {args.preset} {args.model_type} ({args.variant}) checkpoint to {path}")
    return 0
