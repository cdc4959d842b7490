"""`baton generate --model DIR --prompt TEXT`: one offline generation, printed."""

from __future__ import annotations

import argparse
import json
import sys

from baton.sampling_flags import add_sampling_flags, sampling_options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate", help="generate text offline with the engine")
    parser.add_argument("--model", required=True, help="checkpoint directory (Hugging Face layout)")
    parser.add_argument("--prompt", required=True, action="append", help="prompt text (repeatable)")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    add_sampling_flags(parser, defaults={"max_tokens": 64, "temperature": 0.0})  # offline: short and greedy
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--ignore-eos", action="store_true")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: the checkpoint's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.llm import LLM  # lazy: CLI startup
    from engine.sampling_params import SamplingParams  # lazy: CLI startup

    try:
        params = SamplingParams(
            **sampling_options(args), stop=tuple(args.stop), ignore_eos=args.ignore_eos
        ).validate()
        llm = LLM(args.model, dtype=args.dtype)
        prompts = args.prompt
        if args.chat:
            prompts = [llm.tokenizer.apply_chat_template([{"role": "user", "content": p}]) for p in prompts]
        results = llm.generate(prompts, params)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for result in results:
        if args.json:
            print(
                json.dumps(
                    {
                        "text": result.text,
                        "token_ids": result.token_ids,
                        "finish_reason": result.finish_reason,
                    }
                )
            )
        else:
            print(result.text)
    return 0
