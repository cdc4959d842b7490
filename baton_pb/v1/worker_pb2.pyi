from baton_pb.v1 import admin_pb2 as _admin_pb2
from baton_pb.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegionLayout(_message.Message):
    __slots__ = ("name", "dtype", "num_layers", "num_units", "unit_shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    NUM_UNITS_FIELD_NUMBER: _ClassVar[int]
    UNIT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    num_layers: int
    num_units: int
    unit_shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., num_layers: _Optional[int] = ..., num_units: _Optional[int] = ..., unit_shape: _Optional[_Iterable[int]] = ...) -> None: ...

class RegionUnits(_message.Message):
    __slots__ = ("name", "units")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    name: str
    units: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., units: _Optional[_Iterable[int]] = ...) -> None: ...

class TransferDescriptor(_message.Message):
    __slots__ = ("transfer_id", "backend", "address", "units", "layouts", "deadline_unix_s", "skip_blocks", "secret", "shards", "layout", "skip_regions")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    LAYOUTS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    SKIP_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    SKIP_REGIONS_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    backend: str
    address: bytes
    units: _containers.RepeatedCompositeFieldContainer[RegionUnits]
    layouts: _containers.RepeatedCompositeFieldContainer[RegionLayout]
    deadline_unix_s: float
    skip_blocks: int
    secret: str
    shards: _containers.RepeatedCompositeFieldContainer[ShardDescriptor]
    layout: str
    skip_regions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, transfer_id: _Optional[str] = ..., backend: _Optional[str] = ..., address: _Optional[bytes] = ..., units: _Optional[_Iterable[_Union[RegionUnits, _Mapping]]] = ..., layouts: _Optional[_Iterable[_Union[RegionLayout, _Mapping]]] = ..., deadline_unix_s: _Optional[float] = ..., skip_blocks: _Optional[int] = ..., secret: _Optional[str] = ..., shards: _Optional[_Iterable[_Union[ShardDescriptor, _Mapping]]] = ..., layout: _Optional[str] = ..., skip_regions: _Optional[_Iterable[str]] = ...) -> None: ...

class ShardDescriptor(_message.Message):
    __slots__ = ("src_rank", "dst_rank", "descriptor")
    SRC_RANK_FIELD_NUMBER: _ClassVar[int]
    DST_RANK_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    src_rank: int
    dst_rank: int
    descriptor: TransferDescriptor
    def __init__(self, src_rank: _Optional[int] = ..., dst_rank: _Optional[int] = ..., descriptor: _Optional[_Union[TransferDescriptor, _Mapping]] = ...) -> None: ...

class WorkerRequest(_message.Message):
    __slots__ = ("request_id", "session_id", "prompt_token_ids", "sampling", "cache_salt")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    CACHE_SALT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    session_id: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: _common_pb2.SamplingParams
    cache_salt: str
    def __init__(self, request_id: _Optional[str] = ..., session_id: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., cache_salt: _Optional[str] = ...) -> None: ...

class FetchSource(_message.Message):
    __slots__ = ("worker_id", "address", "blocks")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    address: str
    blocks: int
    def __init__(self, worker_id: _Optional[str] = ..., address: _Optional[str] = ..., blocks: _Optional[int] = ...) -> None: ...

class PrefillRequest(_message.Message):
    __slots__ = ("request", "destination", "fetch")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    FETCH_FIELD_NUMBER: _ClassVar[int]
    request: WorkerRequest
    destination: TransferDescriptor
    fetch: FetchSource
    def __init__(self, request: _Optional[_Union[WorkerRequest, _Mapping]] = ..., destination: _Optional[_Union[TransferDescriptor, _Mapping]] = ..., fetch: _Optional[_Union[FetchSource, _Mapping]] = ...) -> None: ...

class PrefillResponse(_message.Message):
    __slots__ = ("first_token", "prompt_tokens", "cached_tokens", "fetched_tokens", "computed_tokens", "transfer_bytes", "prefill_seconds", "first_logprobs", "fetch_failed")
    FIRST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FETCHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPUTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_BYTES_FIELD_NUMBER: _ClassVar[int]
    PREFILL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FIRST_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    FETCH_FAILED_FIELD_NUMBER: _ClassVar[int]
    first_token: int
    prompt_tokens: int
    cached_tokens: int
    fetched_tokens: int
    computed_tokens: int
    transfer_bytes: int
    prefill_seconds: float
    first_logprobs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenLogprob]
    fetch_failed: bool
    def __init__(self, first_token: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ..., fetched_tokens: _Optional[int] = ..., computed_tokens: _Optional[int] = ..., transfer_bytes: _Optional[int] = ..., prefill_seconds: _Optional[float] = ..., first_logprobs: _Optional[_Iterable[_Union[_common_pb2.TokenLogprob, _Mapping]]] = ..., fetch_failed: _Optional[bool] = ...) -> None: ...

class PrefillProgress(_message.Message):
    __slots__ = ("computed_tokens", "heartbeat", "result")
    COMPUTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    computed_tokens: int
    heartbeat: bool
    result: PrefillResponse
    def __init__(self, computed_tokens: _Optional[int] = ..., heartbeat: _Optional[bool] = ..., result: _Optional[_Union[PrefillResponse, _Mapping]] = ...) -> None: ...

class ReserveRequest(_message.Message):
    __slots__ = ("request", "transfer_id", "deadline_s", "source_tp")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TP_FIELD_NUMBER: _ClassVar[int]
    request: WorkerRequest
    transfer_id: str
    deadline_s: float
    source_tp: int
    def __init__(self, request: _Optional[_Union[WorkerRequest, _Mapping]] = ..., transfer_id: _Optional[str] = ..., deadline_s: _Optional[float] = ..., source_tp: _Optional[int] = ...) -> None: ...

class ReserveResponse(_message.Message):
    __slots__ = ("descriptor", "cached_blocks")
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    CACHED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    descriptor: TransferDescriptor
    cached_blocks: int
    def __init__(self, descriptor: _Optional[_Union[TransferDescriptor, _Mapping]] = ..., cached_blocks: _Optional[int] = ...) -> None: ...

class DecodeRequest(_message.Message):
    __slots__ = ("request_id", "transfer_deadline_s")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    transfer_deadline_s: float
    def __init__(self, request_id: _Optional[str] = ..., transfer_deadline_s: _Optional[float] = ...) -> None: ...

class WorkerGenerateRequest(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: WorkerRequest
    def __init__(self, request: _Optional[_Union[WorkerRequest, _Mapping]] = ...) -> None: ...

class TokenChunk(_message.Message):
    __slots__ = ("token_ids", "finish_reason", "prompt_tokens", "cached_tokens", "logprobs", "heartbeat")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int
    logprobs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenLogprob]
    heartbeat: bool
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., finish_reason: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ..., logprobs: _Optional[_Iterable[_Union[_common_pb2.TokenLogprob, _Mapping]]] = ..., heartbeat: _Optional[bool] = ...) -> None: ...

class CancelReservationRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class CancelReservationResponse(_message.Message):
    __slots__ = ("cancelled",)
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    cancelled: bool
    def __init__(self, cancelled: _Optional[bool] = ...) -> None: ...

class GetLoadRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerAbortRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class WorkerAbortResponse(_message.Message):
    __slots__ = ("aborted",)
    ABORTED_FIELD_NUMBER: _ClassVar[int]
    aborted: bool
    def __init__(self, aborted: _Optional[bool] = ...) -> None: ...

class WorkerDrainRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerDrainResponse(_message.Message):
    __slots__ = ("draining",)
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    draining: bool
    def __init__(self, draining: _Optional[bool] = ...) -> None: ...

class SubscribeKvEventsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class KvEvent(_message.Message):
    __slots__ = ("kind", "namespace", "block_hashes", "checkpoint_hashes")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    BLOCK_HASHES_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_HASHES_FIELD_NUMBER: _ClassVar[int]
    kind: str
    namespace: str
    block_hashes: _containers.RepeatedScalarFieldContainer[int]
    checkpoint_hashes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, kind: _Optional[str] = ..., namespace: _Optional[str] = ..., block_hashes: _Optional[_Iterable[int]] = ..., checkpoint_hashes: _Optional[_Iterable[int]] = ...) -> None: ...

class KvEventBatch(_message.Message):
    __slots__ = ("worker_id", "epoch", "events", "snapshot")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    epoch: int
    events: _containers.RepeatedCompositeFieldContainer[KvEvent]
    snapshot: bool
    def __init__(self, worker_id: _Optional[str] = ..., epoch: _Optional[int] = ..., events: _Optional[_Iterable[_Union[KvEvent, _Mapping]]] = ..., snapshot: _Optional[bool] = ...) -> None: ...

class ExposePrefixRequest(_message.Message):
    __slots__ = ("token_ids", "cache_salt", "blocks", "transfer_id", "deadline_s")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    CACHE_SALT_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    cache_salt: str
    blocks: int
    transfer_id: str
    deadline_s: float
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., cache_salt: _Optional[str] = ..., blocks: _Optional[int] = ..., transfer_id: _Optional[str] = ..., deadline_s: _Optional[float] = ...) -> None: ...

class ExposePrefixResponse(_message.Message):
    __slots__ = ("descriptor", "blocks")
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    descriptor: TransferDescriptor
    blocks: int
    def __init__(self, descriptor: _Optional[_Union[TransferDescriptor, _Mapping]] = ..., blocks: _Optional[int] = ...) -> None: ...

class ReleaseExposedRequest(_message.Message):
    __slots__ = ("transfer_id",)
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    def __init__(self, transfer_id: _Optional[str] = ...) -> None: ...

class ReleaseExposedResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
