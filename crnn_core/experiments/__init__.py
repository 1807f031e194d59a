"""Experiments: grids of runs on local processes or Ray, their curves and statistics, the plots."""
