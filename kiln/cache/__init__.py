"""The content-addressed store (local) — later also remotes."""

from ._store import GcPlan, Store, VerifyReport, default_store_root

__all__ = ["GcPlan", "Store", "VerifyReport", "default_store_root"]
