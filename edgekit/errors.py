"""The one exception hierarchy of edgekit.

    EdgekitError                      exit 1
    ├── ConfigError                   exit 2   bad option, bad config file
    │   └── UnsupportedFormatError    exit 2   unknown target/backend (with did-you-mean)
    ├── DataError                     exit 3   unreadable or inconsistent data file
    ├── MissingDependencyError        exit 4   an optional extra is not installed
    ├── ModelError                    exit 5   model dir missing, unsupported architecture, label mismatch
    ├── ConversionError               exit 6   an export or quantization step failed
    │   └── AccuracyGateError         exit 7   an artifact lost more accuracy than allowed
    ├── ManifestError                 exit 8   bundle manifest missing, invalid, or checksum mismatch
    ├── InvalidInput                  exit 9   a request the runtime refuses (gRPC INVALID_ARGUMENT)
    ├── CloudUnavailable              exit 10  the cloud model could not answer (gRPC UNAVAILABLE)
    ├── Overloaded                    exit 11  the server is at capacity; retry later (gRPC RESOURCE_EXHAUSTED)
    └── DeadlineExceeded              exit 12  the caller's deadline passed before the work ran (gRPC DEADLINE_EXCEEDED)

Third-party errors are wrapped once at the boundary with ``raise ... from exc``.
The gRPC status of each class is named as a string so that this module imports
nothing heavy; the runtime maps it to ``grpc.StatusCode``.
"""

from __future__ import annotations

__all__ = [
    "AccuracyGateError",
    "CloudUnavailable",
    "ConfigError",
    "ConversionError",
    "DataError",
    "DeadlineExceeded",
    "EdgekitError",
    "InvalidInput",
    "ManifestError",
    "MissingDependencyError",
    "ModelError",
    "Overloaded",
    "UnsupportedFormatError",
]


class EdgekitError(Exception):
    """Base of every error edgekit raises on purpose."""

    exit_code = 1
    grpc_status = "INTERNAL"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def with_hint(self, hint: str) -> EdgekitError:
        """Replace the hint (returns self, for ``raise Error(...).with_hint(...)``)."""
        self.hint = hint
        return self

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


# One class per row of the tree above, alike on purpose (an exit code and a gRPC status each): plain
# class statements, not made in a loop, so that type checkers, ``except`` clauses and pickling see them.
class ConfigError(EdgekitError):
    exit_code = 2
    grpc_status = "INVALID_ARGUMENT"


class UnsupportedFormatError(ConfigError):
    pass


class DataError(EdgekitError):
    exit_code = 3
    grpc_status = "INVALID_ARGUMENT"


class MissingDependencyError(EdgekitError):
    exit_code = 4
    grpc_status = "FAILED_PRECONDITION"

    def __init__(self, package: str, extra: str, *, what: str | None = None) -> None:
        need = what or package
        super().__init__(
            f"{need} needs the Python package '{package}', which is not installed",
            hint=f'pip install "edgekit[{extra}]"',
        )
        self.package = package
        self.extra = extra


class ModelError(EdgekitError):
    exit_code = 5
    grpc_status = "FAILED_PRECONDITION"


class ConversionError(EdgekitError):
    exit_code = 6


class AccuracyGateError(ConversionError):
    exit_code = 7


class ManifestError(EdgekitError):
    exit_code = 8
    grpc_status = "FAILED_PRECONDITION"


class InvalidInput(EdgekitError):
    exit_code = 9
    grpc_status = "INVALID_ARGUMENT"


class CloudUnavailable(EdgekitError):
    exit_code = 10
    grpc_status = "UNAVAILABLE"


class Overloaded(EdgekitError):
    exit_code = 11
    grpc_status = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(EdgekitError):
    exit_code = 12
    grpc_status = "DEADLINE_EXCEEDED"
