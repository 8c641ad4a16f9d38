"""The accelerator's controller as engines, each a `wiring.Component` with its own test.

`Sequencer` (fetch, decode, set-up, checks) starts `GatherEngine`, `IssueEngine` and `WriterEngine`
for a CONV, `PoolEngine` for a POOL, and queues LOADs into `LoadEngine`; `ActBufferArbiter` shares the
activation buffer between them and the host. `hw.accel.Accelerator` joins them (docs/accelerator-design.md).
"""

from .arbiter import ActBufferArbiter
from .gather import GatherEngine
from .issue import IssueEngine
from .load import LoadEngine
from .plan import Plan
from .pool import PoolEngine
from .sequencer import Sequencer
from .writer import WriterEngine

__all__ = ["ActBufferArbiter", "GatherEngine", "IssueEngine", "LoadEngine", "Plan", "PoolEngine", "Sequencer",
           "WriterEngine"]
