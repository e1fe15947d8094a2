"""Python's cyclic garbage collector held off while a step loads its libraries.

Importing torch, torch._dynamo, MLflow and matplotlib makes about 800,000 objects that live as
long as the process. The collector, started every 700 new objects, walks the growing heap again
and again while they are being made: on the 2-core VM about a fifth of those imports' CPU
(`python -c "import torch, torch._dynamo, mlflow, matplotlib.figure"`, medians of 6: 4.5 s
of CPU as usual, 3.6 s with the collector off). Every rank of every training and every
prediction pays it, and then pays again each time a full collection walks the libraries.

So `train` and `predict` hold the collector off (`hold_collector`) before they import, and let
it go (`release_collector`) once their libraries are loaded, just before the main loop:
gc.freeze() moves everything made so far (the libraries' objects) out of every later
collection, then the collector runs as usual on the step's own objects. (The gc module's
documentation gives disable, freeze, enable for another purpose, sharing pages after fork; the
calls are the same.)

No collection before the freeze: it walked the ~730,000 objects once more for 0.3-0.4 s per
process (each rank, each prediction) to free what was left in reference cycles by then.
Measured at the release points themselves (MNIST on the CPU, gc.DEBUG_SAVEALL): `train`
10,578 objects, 8.2 MB; `predict` (the registered model loaded) 12,020 objects, 11.0 MB; in
both the only tensors among them were 47-48 that hold no data (0 bytes): no weights.
Those stay, frozen, for the life of the process: a fixed amount paid once, not a leak that
grows. Not measured: a GPU predict, whose model is moved to the device before the release.
"""

from __future__ import annotations

import gc
import os

from itwinai_hpc.core import job_env

_owned = False
_held = False


def own_process() -> None:
    """Called by the console script before the command runs: the process is itwinai-hpc's."""
    global _owned
    _owned = os.environ.get(job_env.GC) != "normal"


def hold_collector() -> None:
    """Hold the collector off while the step imports its libraries (our processes only)."""
    global _held
    if _owned and not _held and gc.isenabled():
        gc.disable()
        _held = True


def release_collector() -> None:
    """The libraries are loaded: keep everything made so far out of later collections and
    collect as usual from here on. Does nothing where nothing was held."""
    global _held
    if _held:
        _held = False
        gc.freeze()
        gc.enable()


def collector_held() -> bool:
    return _held
