"""Launch files for a dse configuration: the engine commands, the benchmark, and what to compare.

`plan(row, backend)` -> LaunchPlan (command lines, or the reasons the engine cannot express
the configuration); `write(plans, out_dir)` writes one directory per runnable plan.
Engine flag names live in hardware/engines.yaml with their versions and sources.
"""
from dse.launch.engines import BACKENDS, engines, flag_names, load_engines
from dse.launch.plan import LaunchPlan, Pool, plan
from dse.launch.write import deployment_record, write

__all__ = ["BACKENDS", "LaunchPlan", "Pool", "plan", "write", "deployment_record", "engines", "flag_names",
           "load_engines"]
