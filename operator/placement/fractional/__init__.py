"""Fractional GPU sharing (the FGD track): pods ask for a share of a GPU."""
