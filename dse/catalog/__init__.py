"""Load and validate data files (devices, systems, facility, models) into frozen objects."""
