"""`TokenReadback`: the one device-to-host copy of a step, the chosen token ids.

Everything else a step needs stays on the device. The copy is started right after sampling is
queued (`start`, non-blocking into pinned memory, with an event) and waited for only when the
engine reads the tokens (`PendingTokens.read`), so with overlap scheduling the host plans the next
step between the two. On the CPU the tokens are already host memory: `read` just lists them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(slots=True)
class PendingTokens:
    host: torch.Tensor  # [B] long, host memory (pinned on cuda), filled once `event` completes
    event: torch.cuda.Event | None

    def read(self) -> list[int]:
        if self.event is not None:
            self.event.synchronize()
        return self.host.tolist()


class TokenReadback:
    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)

    def start(self, token_ids: torch.Tensor) -> PendingTokens:
        if token_ids.device.type == "cpu":
            return PendingTokens(token_ids, None)
        host = torch.empty(token_ids.shape, dtype=token_ids.dtype, pin_memory=True)
        host.copy_(token_ids, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return PendingTokens(host, event)
