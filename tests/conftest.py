"""Under the tests a NaN or infinite metric on a feasible row is an engine bug that raises
(dse.deploy.evaluate.guard_output); in production such a row is flagged infeasible."""
import os

os.environ.setdefault("DSE_STRICT_OUTPUT", "1")
