"""The runtime every pbxmesh service shares: config, gRPC skeleton, errors, telemetry, etcd,
retry delays and host:port addresses."""

from services.runtime._loader import ConfigError, Secret
from services.runtime.addresses import join_host_port, parse_host_port
from services.runtime.backoff import Backoff
from services.runtime.config import Config, load_config
from services.runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServiceError,
    Unavailable,
    error_info,
)
from services.runtime.etcd import EtcdAuthFailed, EtcdConnector, EtcdUnavailable, LeaseSession, WatchLost
from services.runtime.grpc_server import GrpcHost, run_until_signal
from services.runtime.logs import setup_logging
from services.runtime.telemetry import Telemetry, setup_telemetry

__all__ = [
    "Backoff",
    "Config",
    "ConfigError",
    "EtcdAuthFailed",
    "EtcdConnector",
    "EtcdUnavailable",
    "FailedPrecondition",
    "GrpcHost",
    "InvalidArgument",
    "LeaseSession",
    "NotFound",
    "Secret",
    "ServiceError",
    "Telemetry",
    "Unavailable",
    "WatchLost",
    "error_info",
    "join_host_port",
    "load_config",
    "parse_host_port",
    "run_until_signal",
    "setup_logging",
    "setup_telemetry",
]
