"""Build orchestration: plan → stages → publish; single-flight; worker subprocesses; progress."""

from ._build import BUILD_LOG, BuildResult, build

__all__ = ["BUILD_LOG", "BuildResult", "build"]
