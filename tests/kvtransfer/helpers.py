"""Random page/slot regions shaped like CacheTensors, and a full-transfer driver for the suite."""

from __future__ import annotations

import random

import torch

DTYPES = (torch.bfloat16, torch.float32, torch.float16)


def make_regions(
    seed: int, num_pages: int = 24, num_slots: int = 6, fill: bool = True
) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    shapes = {
        "kv": (3, num_pages, 2, 4, 2, 8),
        "conv": (2, num_slots, 12, 3),
        "ssm": (2, num_slots, 2, 4, 4),
    }
    dtypes = {"kv": rng.choice(DTYPES), "conv": rng.choice(DTYPES), "ssm": torch.float32}
    out = {}
    for name, shape in shapes.items():
        t = torch.randn(shape, generator=gen) if fill else torch.zeros(shape)
        out[name] = t.to(dtypes[name])
    return out


def zeros_like_regions(regions: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: torch.zeros_like(t) for name, t in regions.items()}


def random_units(rng: random.Random, regions: dict[str, torch.Tensor], n_pages: int) -> dict[str, list[int]]:
    return {
        "kv": rng.sample(range(regions["kv"].shape[1]), n_pages),
        "conv": [rng.randrange(regions["conv"].shape[1])],
        "ssm": [rng.randrange(regions["ssm"].shape[1])],
    }


def post_all(handle, regions: dict[str, torch.Tensor], src: dict[str, list[int]], chunks: int) -> None:
    """Post layer by layer (like a prefill), each region's units in `chunks` pieces."""
    for layer in range(max(t.shape[0] for t in regions.values())):
        for name, units in src.items():
            if layer >= regions[name].shape[0]:
                continue
            step = max(1, -(-len(units) // chunks))
            for i in range(0, len(units), step):
                handle.post(name, layer, units[i : i + step])


def assert_units_equal(src_regions, src_units, dst_regions, dst_units, skip: int = 0) -> None:
    for name in src_units:
        first = skip if name == "kv" else 0
        s = src_regions[name][:, list(src_units[name][first:])]
        d = dst_regions[name][:, list(dst_units[name][first:])]
        assert torch.equal(s, d), f"region {name} differs"
