"""kvtransfer's `TransferDescriptor` to and from the wire. Only workers hand descriptors around
(the router passes the proto through untouched), and `rpc/` imports no kvtransfer, so this lives here."""

from __future__ import annotations

from baton_pb.v1 import worker_pb2
from kvtransfer.base import RegionLayout, TransferDescriptor


def descriptor_to_proto(descriptor: TransferDescriptor) -> worker_pb2.TransferDescriptor:
    return worker_pb2.TransferDescriptor(
        transfer_id=descriptor.transfer_id,
        backend=descriptor.backend,
        address=descriptor.address,
        units=[worker_pb2.RegionUnits(name=name, units=list(units)) for name, units in descriptor.dst_units.items()],
        layouts=[
            worker_pb2.RegionLayout(
                name=name,
                dtype=layout.dtype,
                num_layers=layout.num_layers,
                num_units=layout.num_units,
                unit_shape=list(layout.unit_shape),
            )
            for name, layout in descriptor.layouts.items()
        ],
        deadline_unix_s=descriptor.deadline_unix_s,
        skip_blocks=descriptor.skip_blocks,
        secret=descriptor.secret,
        skip_regions=list(descriptor.skip_regions),
    )


def descriptor_from_proto(message: worker_pb2.TransferDescriptor) -> TransferDescriptor:
    return TransferDescriptor(
        transfer_id=message.transfer_id,
        backend=message.backend,
        address=bytes(message.address),
        dst_units={region.name: tuple(region.units) for region in message.units},
        layouts={
            layout.name: RegionLayout(
                dtype=layout.dtype,
                num_layers=layout.num_layers,
                num_units=layout.num_units,
                unit_shape=tuple(layout.unit_shape),
            )
            for layout in message.layouts
        },
        deadline_unix_s=message.deadline_unix_s,
        skip_blocks=message.skip_blocks,
        secret=message.secret,
        skip_regions=tuple(message.skip_regions) or ("kv",),
    )
