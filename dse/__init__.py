"""dse: design-space exploration for LLM serving infrastructure.

The public face is small: `evaluate` maps configuration columns to metric columns,
`sweep` searches a scenario, `load_scenario` reads one.
"""
from dse.errors import DSEError

__version__ = "0.1.0"

__all__ = ["DSEError", "evaluate", "evaluate_mix", "explain", "grid", "sweep", "load_scenario", "load_space", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import dse` stays cheap and the model never imports the search stack.
    if name in ("evaluate", "evaluate_mix", "explain", "grid", "sweep", "load_scenario", "load_space"):
        from dse import api

        return getattr(api, name)
    raise AttributeError(name)
