"""`python -m dse.cli`: the `dse` command without its console script.

(`python -m dse.cli.main` runs a module the package has already imported, and Python warns.)"""
import sys

from dse.cli.main import main

sys.exit(main())
