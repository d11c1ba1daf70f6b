"""Target-agnostic build orchestration: lookup → the target's steps → publish.

``build``      one path for every target (``kiln.compile.build``)
``stages``     find-or-compute one step, single-flight, in a store-owned build directory
``worker``     run a target's worker subprocess, time its stages, keep its log
``matrix``     the matrix file format and its expansion into rows
``plan``       validate every row and mark hits (nothing built or downloaded)
``executors``  run the planned rows: local (memory-aware) or Ray; GitHub fan-out

Nothing here knows a target by name: what differs between backends is asked of the Target.
"""

from .build import BuildResult, build, plan_build, push_build
from .worker import BUILD_LOG

__all__ = ["BUILD_LOG", "BuildResult", "build", "plan_build", "push_build"]
