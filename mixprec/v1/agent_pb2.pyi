import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from mixprec.v1 import policy_pb2 as _policy_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Hardware(_message.Message):
    __slots__ = ("device", "fp8_kernel", "kernel", "dtype", "torch_version")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    FP8_KERNEL_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    TORCH_VERSION_FIELD_NUMBER: _ClassVar[int]
    device: str
    fp8_kernel: bool
    kernel: str
    dtype: str
    torch_version: str
    def __init__(self, device: _Optional[str] = ..., fp8_kernel: _Optional[bool] = ..., kernel: _Optional[str] = ..., dtype: _Optional[str] = ..., torch_version: _Optional[str] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("endpoint", "worker_id", "layers", "hardware", "running_version", "model", "inference_address")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    RUNNING_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    worker_id: str
    layers: _containers.RepeatedScalarFieldContainer[str]
    hardware: Hardware
    running_version: int
    model: str
    inference_address: str
    def __init__(self, endpoint: _Optional[str] = ..., worker_id: _Optional[str] = ..., layers: _Optional[_Iterable[str]] = ..., hardware: _Optional[_Union[Hardware, _Mapping]] = ..., running_version: _Optional[int] = ..., model: _Optional[str] = ..., inference_address: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("version", "nonce")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    version: int
    nonce: str
    def __init__(self, version: _Optional[int] = ..., nonce: _Optional[str] = ...) -> None: ...

class Nack(_message.Message):
    __slots__ = ("version", "nonce", "error")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    version: int
    nonce: str
    error: str
    def __init__(self, version: _Optional[int] = ..., nonce: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class Report(_message.Message):
    __slots__ = ("kind", "version", "metrics", "deltas", "throughput", "latency_p50_ms", "latency_p99_ms", "requests", "samples", "window_seconds", "report_id")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Report.Kind]
        QUALITY: _ClassVar[Report.Kind]
        SERVING: _ClassVar[Report.Kind]
    KIND_UNSPECIFIED: Report.Kind
    QUALITY: Report.Kind
    SERVING: Report.Kind
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class DeltasEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    kind: Report.Kind
    version: int
    metrics: _containers.ScalarMap[str, float]
    deltas: _containers.ScalarMap[str, float]
    throughput: float
    latency_p50_ms: float
    latency_p99_ms: float
    requests: int
    samples: int
    window_seconds: float
    report_id: str
    def __init__(self, kind: _Optional[_Union[Report.Kind, str]] = ..., version: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., deltas: _Optional[_Mapping[str, float]] = ..., throughput: _Optional[float] = ..., latency_p50_ms: _Optional[float] = ..., latency_p99_ms: _Optional[float] = ..., requests: _Optional[int] = ..., samples: _Optional[int] = ..., window_seconds: _Optional[float] = ..., report_id: _Optional[str] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("hello", "ack", "nack", "report")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    ack: Ack
    nack: Nack
    report: Report
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., nack: _Optional[_Union[Nack, _Mapping]] = ..., report: _Optional[_Union[Report, _Mapping]] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("version", "nonce", "precision_map", "reason")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_MAP_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    version: int
    nonce: str
    precision_map: _containers.RepeatedCompositeFieldContainer[_policy_pb2.LayerPrecision]
    reason: str
    def __init__(self, version: _Optional[int] = ..., nonce: _Optional[str] = ..., precision_map: _Optional[_Iterable[_Union[_policy_pb2.LayerPrecision, _Mapping]]] = ..., reason: _Optional[str] = ...) -> None: ...

class ReportAck(_message.Message):
    __slots__ = ("kind", "version", "report_id")
    KIND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    kind: Report.Kind
    version: int
    report_id: str
    def __init__(self, kind: _Optional[_Union[Report.Kind, str]] = ..., version: _Optional[int] = ..., report_id: _Optional[str] = ...) -> None: ...

class ReportRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class ControlMessage(_message.Message):
    __slots__ = ("assignment", "report_ack", "report_request")
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    REPORT_ACK_FIELD_NUMBER: _ClassVar[int]
    REPORT_REQUEST_FIELD_NUMBER: _ClassVar[int]
    assignment: Assignment
    report_ack: ReportAck
    report_request: ReportRequest
    def __init__(self, assignment: _Optional[_Union[Assignment, _Mapping]] = ..., report_ack: _Optional[_Union[ReportAck, _Mapping]] = ..., report_request: _Optional[_Union[ReportRequest, _Mapping]] = ...) -> None: ...

class ActivateRequest(_message.Message):
    __slots__ = ("endpoint", "version", "actor", "reason", "request_id")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    version: int
    actor: str
    reason: str
    request_id: str
    def __init__(self, endpoint: _Optional[str] = ..., version: _Optional[int] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("endpoint", "reason", "to_version", "to_base", "actor", "request_id")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_BASE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    reason: str
    to_version: int
    to_base: bool
    actor: str
    request_id: str
    def __init__(self, endpoint: _Optional[str] = ..., reason: _Optional[str] = ..., to_version: _Optional[int] = ..., to_base: _Optional[bool] = ..., actor: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ActivationResponse(_message.Message):
    __slots__ = ("endpoint", "previous_version", "active_version", "connected_workers")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_WORKERS_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    previous_version: int
    active_version: int
    connected_workers: int
    def __init__(self, endpoint: _Optional[str] = ..., previous_version: _Optional[int] = ..., active_version: _Optional[int] = ..., connected_workers: _Optional[int] = ...) -> None: ...

class WorkerStatus(_message.Message):
    __slots__ = ("worker_id", "connected", "applied_version", "last_ack_version", "last_nack_version", "last_nack", "last_report", "last_quality", "last_serving", "last_seen", "hardware", "inference_address", "desired_version")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    APPLIED_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_ACK_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_NACK_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_NACK_FIELD_NUMBER: _ClassVar[int]
    LAST_REPORT_FIELD_NUMBER: _ClassVar[int]
    LAST_QUALITY_FIELD_NUMBER: _ClassVar[int]
    LAST_SERVING_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DESIRED_VERSION_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    connected: bool
    applied_version: int
    last_ack_version: int
    last_nack_version: int
    last_nack: str
    last_report: Report
    last_quality: Report
    last_serving: Report
    last_seen: _timestamp_pb2.Timestamp
    hardware: Hardware
    inference_address: str
    desired_version: int
    def __init__(self, worker_id: _Optional[str] = ..., connected: _Optional[bool] = ..., applied_version: _Optional[int] = ..., last_ack_version: _Optional[int] = ..., last_nack_version: _Optional[int] = ..., last_nack: _Optional[str] = ..., last_report: _Optional[_Union[Report, _Mapping]] = ..., last_quality: _Optional[_Union[Report, _Mapping]] = ..., last_serving: _Optional[_Union[Report, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., hardware: _Optional[_Union[Hardware, _Mapping]] = ..., inference_address: _Optional[str] = ..., desired_version: _Optional[int] = ...) -> None: ...

class GetFleetRequest(_message.Message):
    __slots__ = ("endpoint",)
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    def __init__(self, endpoint: _Optional[str] = ...) -> None: ...

class GetFleetResponse(_message.Message):
    __slots__ = ("endpoint", "active_version", "workers")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    active_version: int
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStatus]
    def __init__(self, endpoint: _Optional[str] = ..., active_version: _Optional[int] = ..., workers: _Optional[_Iterable[_Union[WorkerStatus, _Mapping]]] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("endpoint", "action", "actor", "reason", "detail_json", "time")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_JSON_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    action: str
    actor: str
    reason: str
    detail_json: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, endpoint: _Optional[str] = ..., action: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., detail_json: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("endpoint", "limit")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    limit: int
    def __init__(self, endpoint: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ...) -> None: ...

class TakeOverWorkerRequest(_message.Message):
    __slots__ = ("endpoint", "worker_id", "reason", "request_id")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    worker_id: str
    reason: str
    request_id: str
    def __init__(self, endpoint: _Optional[str] = ..., worker_id: _Optional[str] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class TakeOverWorkerResponse(_message.Message):
    __slots__ = ("endpoint", "worker_id", "ended_stream", "revoked_tokens")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ENDED_STREAM_FIELD_NUMBER: _ClassVar[int]
    REVOKED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    worker_id: str
    ended_stream: bool
    revoked_tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, endpoint: _Optional[str] = ..., worker_id: _Optional[str] = ..., ended_stream: _Optional[bool] = ..., revoked_tokens: _Optional[_Iterable[str]] = ...) -> None: ...
