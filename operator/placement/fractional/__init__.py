"""Fractional GPU sharing (the FGD track): pods ask for a share of a GPU.

Modules, one job each (all pure: no I/O):

- :mod:`.model`: node and pod specs, the mutable cluster grouped by node state;
- :mod:`.workload`: FGD's target workload (task types and their popularity);
- :mod:`.frag`: FGD's fragmentation measure, memoised;
- :mod:`.policies`: the :class:`~.policies.FractionalPolicy` interface and helpers;
- :mod:`.baselines`: FGD, BestFit, Random, DotProd, GpuPacking, GpuClustering;
- :mod:`.conspirator`: the project's own policy;
- :mod:`.registry`: policies by name;
- :mod:`.feasibility`: why a pod fits nowhere;
- :mod:`.replan`: global re-plan of a whole pod list.
"""
