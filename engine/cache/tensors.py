"""`CacheTensors`: all device memory of the runtime cache, preallocated once.

Layout (part of the contract: kvtransfer registers and moves these tensors as raw regions):

    kv   [n_attention_layers, num_pages, 2, block_size, num_kv_heads, head_dim]   model dtype
    conv [n_linear_layers,    num_slots, conv_dim, conv_kernel - 1]               model dtype
    ssm  [n_linear_layers,    num_slots, num_v_heads, k_head_dim, v_head_dim]     mamba_ssm_dtype

dim 0 = layer (index among layers of that kind), dim 1 = unit (page id or slot id); one unit of one
layer is contiguous. A state slot at position p holds the state after consuming tokens [0, p).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.model_config import ModelConfig


@dataclass(eq=False)
class CacheTensors:
    kv: torch.Tensor
    conv: torch.Tensor
    ssm: torch.Tensor
    block_size: int
    state_copies: int = 0  # copy_state calls so far (speculative decoding must add none)

    @classmethod
    def allocate(
        cls,
        model_config: ModelConfig,
        num_pages: int,
        num_slots: int,
        block_size: int = 16,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
    ) -> CacheTensors:
        """Zero-filled pools. `dtype` defaults to the model dtype; ssm uses `mamba_ssm_dtype`."""
        if num_pages < 0 or num_slots < 0 or block_size <= 0:
            raise ValueError(
                f"bad cache sizes: num_pages={num_pages}, num_slots={num_slots}, block_size={block_size}"
            )
        cfg = model_config
        dtype = dtype or cfg.dtype
        kv = torch.zeros(
            (cfg.num_attention_layers, num_pages, 2, block_size, cfg.num_key_value_heads, cfg.head_dim),
            dtype=dtype,
            device=device,
        )
        conv = torch.zeros(
            (cfg.num_linear_layers, num_slots, cfg.conv_dim, cfg.linear_conv_kernel_dim - 1),
            dtype=dtype,
            device=device,
        )
        ssm = torch.zeros(
            (
                cfg.num_linear_layers,
                num_slots,
                cfg.linear_num_value_heads,
                cfg.linear_key_head_dim,
                cfg.linear_value_head_dim,
            ),
            dtype=cfg.mamba_ssm_dtype,
            device=device,
        )
        return cls(kv=kv, conv=conv, ssm=ssm, block_size=block_size)

    @staticmethod
    def bytes_for(
        model_config: ModelConfig, block_size: int, dtype: torch.dtype | None = None
    ) -> tuple[int, int]:
        """(bytes per page, bytes per slot) without allocating: for sizing pools from a budget."""
        cfg = model_config
        item = torch.empty((), dtype=dtype or cfg.dtype).element_size()
        ssm_item = torch.empty((), dtype=cfg.mamba_ssm_dtype).element_size()
        page = cfg.num_attention_layers * 2 * block_size * cfg.num_key_value_heads * cfg.head_dim * item
        conv = cfg.num_linear_layers * cfg.conv_dim * (cfg.linear_conv_kernel_dim - 1) * item
        ssm = (
            cfg.num_linear_layers
            * cfg.linear_num_value_heads
            * cfg.linear_key_head_dim
            * cfg.linear_value_head_dim
            * ssm_item
        )
        return page, conv + ssm

    @property
    def num_pages(self) -> int:
        return self.kv.shape[1]

    @property
    def num_slots(self) -> int:
        return self.conv.shape[1]

    @property
    def device(self) -> torch.device:
        return self.kv.device

    def regions(self) -> dict[str, torch.Tensor]:
        return {"kv": self.kv, "conv": self.conv, "ssm": self.ssm}

    def copy_state(self, src_slot: int, dst_slot: int) -> None:
        """Copy the DeltaNet state (conv + ssm, every linear layer) of one slot into another."""
        self._check_slot(src_slot)
        self._check_slot(dst_slot)
        if src_slot == dst_slot:
            return
        self.state_copies += 1
        self.conv[:, dst_slot].copy_(self.conv[:, src_slot])
        self.ssm[:, dst_slot].copy_(self.ssm[:, src_slot])

    def zero_state(self, slot: int) -> None:
        """Reset a slot to the state before any token (position 0)."""
        self._check_slot(slot)
        self.conv[:, slot].zero_()
        self.ssm[:, slot].zero_()

    def bytes_per_page(self) -> int:
        """Bytes of one page across all attention layers."""
        return self.kv[:, 0].numel() * self.kv.element_size() if self.num_pages else 0

    def bytes_per_slot(self) -> int:
        """Bytes of one state slot (conv + ssm) across all linear layers."""
        if not self.num_slots:
            return 0
        return (
            self.conv[:, 0].numel() * self.conv.element_size()
            + self.ssm[:, 0].numel() * self.ssm.element_size()
        )

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.num_slots:
            raise IndexError(f"state slot {slot} out of range [0, {self.num_slots})")
