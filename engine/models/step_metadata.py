"""`MetadataUploader`: the host plans a step's index tensors; one copy puts them on the device.

Per step the host builds small integer arrays (token ids, positions, the page and offset each new
row's KV goes to, state slots, block tables, context lengths). On a GPU, a separate
`torch.tensor(..., device="cuda")` per array would be one synchronous host-to-device copy each.
Here they are packed into a pinned staging buffer and sent with ONE `non_blocking` copy into a
persistent device buffer; the batch's tensors are views of it, so kernels only read them.

Ordering: the copy is queued on the current stream, behind the previous step's kernels, so
overwriting the device buffer for step N+1 never races step N. Two staging buffers alternate,
and a staging buffer is rewritten only after the copy that read it has finished (its event), so
the host can plan step N+1 while step N still runs. On the CPU the host arrays are used as they
are: nothing is copied.
"""

from __future__ import annotations

import torch

_ALIGN = 8  # bytes: every array starts at a multiple of the widest element (int64)


class MetadataUploader:
    def __init__(
        self, device: torch.device | str, initial_bytes: int = 1 << 16, *, pack_on_cpu: bool = False
    ) -> None:
        """`pack_on_cpu`: pack and copy even on the CPU (tests of the packing)."""
        self.device = torch.device(device)
        self._identity = self.device.type == "cpu" and not pack_on_cpu
        self._capacity = 0
        self._device_buffer: torch.Tensor | None = None
        self._staging: list[torch.Tensor] = []
        self._events: list[torch.cuda.Event | None] = [None, None]
        self._turn = 0
        self.num_uploads = 0  # host-to-device copies issued (tests and metrics)
        if not self._identity:
            self._grow(initial_bytes)

    def upload(self, arrays: list[torch.Tensor]) -> list[torch.Tensor]:
        """Device tensors equal to the host `arrays` (integer, contiguous), in order."""
        if self._identity:
            return arrays
        offsets, total = _layout(arrays)
        if total > self._capacity:
            self._grow(max(total, 2 * self._capacity))
        staging = self._staging[self._turn]
        event = self._events[self._turn]
        if event is not None:
            event.synchronize()  # the copy that last read this staging buffer is done
        for array, offset in zip(arrays, offsets, strict=True):
            nbytes = array.numel() * array.element_size()
            staging[offset : offset + nbytes].copy_(array.contiguous().view(-1).view(torch.uint8))
        device_buffer = self._device_buffer
        device_buffer[:total].copy_(staging[:total], non_blocking=True)
        self._events[self._turn] = _record_event(self.device)
        self._turn ^= 1
        self.num_uploads += 1
        return [
            device_buffer[offset : offset + a.numel() * a.element_size()].view(a.dtype).view(a.shape)
            for a, offset in zip(arrays, offsets, strict=True)
        ]

    def _grow(self, nbytes: int) -> None:
        nbytes = -(-nbytes // _ALIGN) * _ALIGN
        pinned = self.device.type == "cuda"
        self._staging = [torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned) for _ in range(2)]
        self._events = [None, None]
        # A new device buffer: views handed out before stay valid (they keep the old one alive).
        self._device_buffer = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        self._capacity = nbytes


def _layout(arrays: list[torch.Tensor]) -> tuple[list[int], int]:
    offsets, total = [], 0
    for array in arrays:
        if array.dtype.is_floating_point or array.device.type != "cpu":
            raise ValueError(f"metadata must be integer host tensors, got {array.dtype} on {array.device}")
        offsets.append(total)
        total += -(-(array.numel() * array.element_size()) // _ALIGN) * _ALIGN
    return offsets, total


def _record_event(device: torch.device) -> torch.cuda.Event | None:
    if device.type != "cuda":
        return None
    event = torch.cuda.Event()
    event.record()
    return event
