"""Split a model's flat parameter vector across parameter-server shards (numpy and stdlib only)."""

from sharding.plan import Piece, PlanError, ShardPlan, TensorSpec
from sharding.report import format_plan
from sharding.strategies import STRATEGIES, make_plan

__all__ = ["ShardPlan", "Piece", "TensorSpec", "PlanError", "make_plan", "STRATEGIES", "format_plan"]
