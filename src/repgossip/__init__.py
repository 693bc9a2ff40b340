"""repgossip: personalized decentralized learning with shared representations.

The public API: `run` (the command line's twin), the extension points (`Algorithm`, `Phase`,
`StateSpec`, `RoundContext`, `Callback` and `StopRun`, the registries) and the result types.
Everything else is internal and may change.
"""

from repgossip.algorithms import ALGORITHMS, Algorithm, Phase, RoundContext, StateSpec
from repgossip.api import run
from repgossip.architectures import MODELS
from repgossip.callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    PlainLog,
    RunInfo,
    StopRun,
    TensorBoardLogger,
)
from repgossip.config import Config, build_config
from repgossip.data.datasets import DATASETS
from repgossip.data.federation import Federation
from repgossip.data.partition import PARTITIONS
from repgossip.errors import (
    DistributedError,
    DivergenceError,
    RepgossipError,
    StorageError,
    UsageError,
)
from repgossip.models import SplitModel
from repgossip.params import Param, with_params
from repgossip.runner import RunResult
from repgossip.version import __version__ as __version__

__all__ = [
    "ALGORITHMS",
    "DATASETS",
    "MODELS",
    "PARTITIONS",
    "Param",
    "Algorithm",
    "CSVLogger",
    "Callback",
    "Config",
    "DistributedError",
    "DivergenceError",
    "EarlyStopping",
    "Federation",
    "Phase",
    "PlainLog",
    "RepgossipError",
    "RoundContext",
    "RunInfo",
    "RunResult",
    "SplitModel",
    "StateSpec",
    "StopRun",
    "StorageError",
    "TensorBoardLogger",
    "UsageError",
    "build_config",
    "run",
    "with_params",
]
