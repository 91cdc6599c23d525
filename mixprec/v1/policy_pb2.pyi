import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Rule(_message.Message):
    __slots__ = ("match", "precision")
    MATCH_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    match: str
    precision: str
    def __init__(self, match: _Optional[str] = ..., precision: _Optional[str] = ...) -> None: ...

class LayerPrecision(_message.Message):
    __slots__ = ("layer", "precision", "rule")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    layer: str
    precision: str
    rule: int
    def __init__(self, layer: _Optional[str] = ..., precision: _Optional[str] = ..., rule: _Optional[int] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("name", "base_precision", "model", "layers", "create_time", "latest_version", "active_version", "layer_count")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BASE_PRECISION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAYER_COUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    base_precision: str
    model: str
    layers: _containers.RepeatedScalarFieldContainer[str]
    create_time: _timestamp_pb2.Timestamp
    latest_version: int
    active_version: int
    layer_count: int
    def __init__(self, name: _Optional[str] = ..., base_precision: _Optional[str] = ..., model: _Optional[str] = ..., layers: _Optional[_Iterable[str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., latest_version: _Optional[int] = ..., active_version: _Optional[int] = ..., layer_count: _Optional[int] = ...) -> None: ...

class PolicyVersion(_message.Message):
    __slots__ = ("endpoint", "version", "parent_version", "rules", "kv_cache", "author", "message", "create_time", "resolved", "artifact_json", "has_artifact")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PARENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_JSON_FIELD_NUMBER: _ClassVar[int]
    HAS_ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    version: int
    parent_version: int
    rules: _containers.RepeatedCompositeFieldContainer[Rule]
    kv_cache: str
    author: str
    message: str
    create_time: _timestamp_pb2.Timestamp
    resolved: _containers.RepeatedCompositeFieldContainer[LayerPrecision]
    artifact_json: str
    has_artifact: bool
    def __init__(self, endpoint: _Optional[str] = ..., version: _Optional[int] = ..., parent_version: _Optional[int] = ..., rules: _Optional[_Iterable[_Union[Rule, _Mapping]]] = ..., kv_cache: _Optional[str] = ..., author: _Optional[str] = ..., message: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resolved: _Optional[_Iterable[_Union[LayerPrecision, _Mapping]]] = ..., artifact_json: _Optional[str] = ..., has_artifact: _Optional[bool] = ...) -> None: ...

class CreateEndpointRequest(_message.Message):
    __slots__ = ("name", "base_precision", "model", "layers", "actor", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BASE_PRECISION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    base_precision: str
    model: str
    layers: _containers.RepeatedScalarFieldContainer[str]
    actor: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., base_precision: _Optional[str] = ..., model: _Optional[str] = ..., layers: _Optional[_Iterable[str]] = ..., actor: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetEndpointRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteEndpointRequest(_message.Message):
    __slots__ = ("name", "reason", "actor", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    reason: str
    actor: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeleteEndpointResponse(_message.Message):
    __slots__ = ("name", "policy_versions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    policy_versions: int
    def __init__(self, name: _Optional[str] = ..., policy_versions: _Optional[int] = ...) -> None: ...

class ListEndpointsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListEndpointsResponse(_message.Message):
    __slots__ = ("endpoints",)
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    def __init__(self, endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ...) -> None: ...

class CreatePolicyRequest(_message.Message):
    __slots__ = ("endpoint", "parent_version", "rules", "kv_cache", "author", "message", "artifact_json", "request_id")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    PARENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_JSON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    parent_version: int
    rules: _containers.RepeatedCompositeFieldContainer[Rule]
    kv_cache: str
    author: str
    message: str
    artifact_json: str
    request_id: str
    def __init__(self, endpoint: _Optional[str] = ..., parent_version: _Optional[int] = ..., rules: _Optional[_Iterable[_Union[Rule, _Mapping]]] = ..., kv_cache: _Optional[str] = ..., author: _Optional[str] = ..., message: _Optional[str] = ..., artifact_json: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ("endpoint", "version", "resolved", "artifact")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    version: int
    resolved: bool
    artifact: bool
    def __init__(self, endpoint: _Optional[str] = ..., version: _Optional[int] = ..., resolved: _Optional[bool] = ..., artifact: _Optional[bool] = ...) -> None: ...

class ListPoliciesRequest(_message.Message):
    __slots__ = ("endpoint",)
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    def __init__(self, endpoint: _Optional[str] = ...) -> None: ...

class ListPoliciesResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[PolicyVersion]
    def __init__(self, versions: _Optional[_Iterable[_Union[PolicyVersion, _Mapping]]] = ...) -> None: ...

class DiffPoliciesRequest(_message.Message):
    __slots__ = ("endpoint", "from_version", "to_version")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    from_version: int
    to_version: int
    def __init__(self, endpoint: _Optional[str] = ..., from_version: _Optional[int] = ..., to_version: _Optional[int] = ...) -> None: ...

class LayerChange(_message.Message):
    __slots__ = ("layer", "from_precision", "to_precision")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    FROM_PRECISION_FIELD_NUMBER: _ClassVar[int]
    TO_PRECISION_FIELD_NUMBER: _ClassVar[int]
    layer: str
    from_precision: str
    to_precision: str
    def __init__(self, layer: _Optional[str] = ..., from_precision: _Optional[str] = ..., to_precision: _Optional[str] = ...) -> None: ...

class DiffPoliciesResponse(_message.Message):
    __slots__ = ("changes", "unchanged")
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[LayerChange]
    unchanged: int
    def __init__(self, changes: _Optional[_Iterable[_Union[LayerChange, _Mapping]]] = ..., unchanged: _Optional[int] = ...) -> None: ...

class ResolvePolicyRequest(_message.Message):
    __slots__ = ("endpoint", "rules", "kv_cache")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    rules: _containers.RepeatedCompositeFieldContainer[Rule]
    kv_cache: str
    def __init__(self, endpoint: _Optional[str] = ..., rules: _Optional[_Iterable[_Union[Rule, _Mapping]]] = ..., kv_cache: _Optional[str] = ...) -> None: ...

class FieldError(_message.Message):
    __slots__ = ("field", "message")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    field: str
    message: str
    def __init__(self, field: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ResolvePolicyResponse(_message.Message):
    __slots__ = ("valid", "errors", "resolved")
    VALID_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    errors: _containers.RepeatedCompositeFieldContainer[FieldError]
    resolved: _containers.RepeatedCompositeFieldContainer[LayerPrecision]
    def __init__(self, valid: _Optional[bool] = ..., errors: _Optional[_Iterable[_Union[FieldError, _Mapping]]] = ..., resolved: _Optional[_Iterable[_Union[LayerPrecision, _Mapping]]] = ...) -> None: ...
