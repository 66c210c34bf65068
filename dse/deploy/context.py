"""What an evaluation reads besides its columns: the facility, the serving-framework
constants, the runtime facts and the power coefficients. Passed down explicitly, so a
scenario's facility overrides or a fit's trial constants apply to exactly one call."""
from __future__ import annotations

from dataclasses import dataclass, field

from dse.catalog import runtime as rt
from dse.catalog.facility import Facility, get_facility

__all__ = ["Context", "make_context"]


@dataclass(frozen=True)
class Context:
    facility: Facility
    serving: dict = field(repr=False)        # dse.catalog.runtime.serving_runtime()'s shape
    runtime: dict = field(repr=False)        # runtime.yaml
    power: dict = field(repr=False)          # power.yaml coefficients


def make_context(*, facility: Facility | None = None, serving: dict | None = None) -> Context:
    """The shipped defaults, with a facility or serving constants of the caller's."""
    return Context(facility=facility if facility is not None else get_facility(),
                   serving=serving if serving is not None else rt.serving_runtime(),
                   runtime=rt.runtime(), power=rt.power_coeffs())
