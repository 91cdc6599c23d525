import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RolloutState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLLOUT_STATE_UNSPECIFIED: _ClassVar[RolloutState]
    RUNNING: _ClassVar[RolloutState]
    PAUSED: _ClassVar[RolloutState]
    SUCCEEDED: _ClassVar[RolloutState]
    ROLLED_BACK: _ClassVar[RolloutState]
    ABORTED: _ClassVar[RolloutState]
    FAILED: _ClassVar[RolloutState]
ROLLOUT_STATE_UNSPECIFIED: RolloutState
RUNNING: RolloutState
PAUSED: RolloutState
SUCCEEDED: RolloutState
ROLLED_BACK: RolloutState
ABORTED: RolloutState
FAILED: RolloutState

class RolloutStep(_message.Message):
    __slots__ = ("workers", "percent")
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    workers: int
    percent: float
    def __init__(self, workers: _Optional[int] = ..., percent: _Optional[float] = ...) -> None: ...

class Guardrails(_message.Message):
    __slots__ = ("max_drop", "min_throughput_ratio", "reports_per_step", "bake_seconds", "max_failed_checks", "step_timeout_seconds", "max_rise")
    class MaxDropEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class MaxRiseEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MAX_DROP_FIELD_NUMBER: _ClassVar[int]
    MIN_THROUGHPUT_RATIO_FIELD_NUMBER: _ClassVar[int]
    REPORTS_PER_STEP_FIELD_NUMBER: _ClassVar[int]
    BAKE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILED_CHECKS_FIELD_NUMBER: _ClassVar[int]
    STEP_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_RISE_FIELD_NUMBER: _ClassVar[int]
    max_drop: _containers.ScalarMap[str, float]
    min_throughput_ratio: float
    reports_per_step: int
    bake_seconds: float
    max_failed_checks: int
    step_timeout_seconds: float
    max_rise: _containers.ScalarMap[str, float]
    def __init__(self, max_drop: _Optional[_Mapping[str, float]] = ..., min_throughput_ratio: _Optional[float] = ..., reports_per_step: _Optional[int] = ..., bake_seconds: _Optional[float] = ..., max_failed_checks: _Optional[int] = ..., step_timeout_seconds: _Optional[float] = ..., max_rise: _Optional[_Mapping[str, float]] = ...) -> None: ...

class GuardrailCheck(_message.Message):
    __slots__ = ("worker_id", "guardrail", "measured", "limit", "passed")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    GUARDRAIL_FIELD_NUMBER: _ClassVar[int]
    MEASURED_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    guardrail: str
    measured: float
    limit: float
    passed: bool
    def __init__(self, worker_id: _Optional[str] = ..., guardrail: _Optional[str] = ..., measured: _Optional[float] = ..., limit: _Optional[float] = ..., passed: _Optional[bool] = ...) -> None: ...

class Rollout(_message.Message):
    __slots__ = ("id", "endpoint", "from_version", "to_version", "steps", "guardrails", "state", "current_step", "failed_checks", "message", "new_version_workers", "last_checks", "actor", "create_time", "step_start_time", "update_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUARDRAILS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_STEP_FIELD_NUMBER: _ClassVar[int]
    FAILED_CHECKS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    NEW_VERSION_WORKERS_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECKS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    STEP_START_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: int
    endpoint: str
    from_version: int
    to_version: int
    steps: _containers.RepeatedCompositeFieldContainer[RolloutStep]
    guardrails: Guardrails
    state: RolloutState
    current_step: int
    failed_checks: int
    message: str
    new_version_workers: _containers.RepeatedScalarFieldContainer[str]
    last_checks: _containers.RepeatedCompositeFieldContainer[GuardrailCheck]
    actor: str
    create_time: _timestamp_pb2.Timestamp
    step_start_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[int] = ..., endpoint: _Optional[str] = ..., from_version: _Optional[int] = ..., to_version: _Optional[int] = ..., steps: _Optional[_Iterable[_Union[RolloutStep, _Mapping]]] = ..., guardrails: _Optional[_Union[Guardrails, _Mapping]] = ..., state: _Optional[_Union[RolloutState, str]] = ..., current_step: _Optional[int] = ..., failed_checks: _Optional[int] = ..., message: _Optional[str] = ..., new_version_workers: _Optional[_Iterable[str]] = ..., last_checks: _Optional[_Iterable[_Union[GuardrailCheck, _Mapping]]] = ..., actor: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., step_start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StartRolloutRequest(_message.Message):
    __slots__ = ("endpoint", "version", "steps", "guardrails", "actor", "request_id")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUARDRAILS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    version: int
    steps: _containers.RepeatedCompositeFieldContainer[RolloutStep]
    guardrails: Guardrails
    actor: str
    request_id: str
    def __init__(self, endpoint: _Optional[str] = ..., version: _Optional[int] = ..., steps: _Optional[_Iterable[_Union[RolloutStep, _Mapping]]] = ..., guardrails: _Optional[_Union[Guardrails, _Mapping]] = ..., actor: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetRolloutRequest(_message.Message):
    __slots__ = ("endpoint", "id")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    id: int
    def __init__(self, endpoint: _Optional[str] = ..., id: _Optional[int] = ...) -> None: ...

class ListRolloutsRequest(_message.Message):
    __slots__ = ("endpoint",)
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    def __init__(self, endpoint: _Optional[str] = ...) -> None: ...

class ListRolloutsResponse(_message.Message):
    __slots__ = ("rollouts",)
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    rollouts: _containers.RepeatedCompositeFieldContainer[Rollout]
    def __init__(self, rollouts: _Optional[_Iterable[_Union[Rollout, _Mapping]]] = ...) -> None: ...

class RolloutActionRequest(_message.Message):
    __slots__ = ("endpoint", "actor", "reason", "request_id")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    actor: str
    reason: str
    request_id: str
    def __init__(self, endpoint: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...
