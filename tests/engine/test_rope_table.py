"""`RopeTable` (the MTP head's drafting rope) rotates exactly as `apply_rope` does: partial and
full rotary widths, positions past the table's first size (it grows), several heads."""

from __future__ import annotations

import pytest
import torch

from engine.ops.rope import RopeTable, apply_rope, rope_cos_sin

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(("rotary_dim", "head_dim"), [(4, 16), (16, 16), (8, 12)])
def test_rope_table_equals_apply_rope(rotary_dim: int, head_dim: int) -> None:
    gen = torch.Generator().manual_seed(rotary_dim + head_dim)
    table = RopeTable(rotary_dim, head_dim, 10000.0)
    for positions in (torch.tensor([0, 1, 7, 255]), torch.tensor([300, 1000, 4, 999])):
        x = torch.randn(positions.shape[0], 3, head_dim, generator=gen)
        expected = apply_rope(x, *rope_cos_sin(positions, rotary_dim, 10000.0, x.dtype))
        rotate = table.rotation(positions, int(positions.max()) + 1, x.dtype)
        assert torch.equal(rotate(x), expected)
    assert table.table.shape[0] >= 1001  # grown past its first 256 positions
