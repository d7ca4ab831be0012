from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Route(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUTE_UNSPECIFIED: _ClassVar[Route]
    ROUTE_EDGE: _ClassVar[Route]
    ROUTE_CLOUD: _ClassVar[Route]
    ROUTE_EDGE_CLOUD_FAILED: _ClassVar[Route]
ROUTE_UNSPECIFIED: Route
ROUTE_EDGE: Route
ROUTE_CLOUD: Route
ROUTE_EDGE_CLOUD_FAILED: Route

class ReloadRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("texts", "top_k", "allow_cloud", "threshold", "request_id")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    ALLOW_CLOUD_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    top_k: int
    allow_cloud: bool
    threshold: float
    request_id: str
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., top_k: _Optional[int] = ..., allow_cloud: _Optional[bool] = ..., threshold: _Optional[float] = ..., request_id: _Optional[str] = ...) -> None: ...

class LabelScore(_message.Message):
    __slots__ = ("label", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("label", "score", "top_k", "route", "edge_score", "latency_ms", "model_name", "model_version")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    EDGE_SCORE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    top_k: _containers.RepeatedCompositeFieldContainer[LabelScore]
    route: Route
    edge_score: float
    latency_ms: float
    model_name: str
    model_version: str
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ..., top_k: _Optional[_Iterable[_Union[LabelScore, _Mapping]]] = ..., route: _Optional[_Union[Route, str]] = ..., edge_score: _Optional[float] = ..., latency_ms: _Optional[float] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("predictions", "request_id")
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    request_id: str
    def __init__(self, predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfoResponse(_message.Message):
    __slots__ = ("name", "version", "format", "precision", "backend", "labels", "max_length", "temperature", "threshold", "summary_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    format: str
    precision: str
    backend: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    max_length: int
    temperature: float
    threshold: float
    summary_json: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., format: _Optional[str] = ..., precision: _Optional[str] = ..., backend: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., max_length: _Optional[int] = ..., temperature: _Optional[float] = ..., threshold: _Optional[float] = ..., summary_json: _Optional[str] = ...) -> None: ...
