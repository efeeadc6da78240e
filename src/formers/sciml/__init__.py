"""Scientific machine learning: ODEFormer (``formers.sciml.ode``), PDE surrogates and PINNs
(``formers.sciml.pde``), with their data generators and tasks.

Importing this package registers the sub-packages' parts and tasks. Optional dependencies
(scipy, sympy, pysindy, gplearn) are imported lazily inside the functions that need them.
"""

from formers.sciml import ode, pde  # noqa: F401  (register their parts and tasks)
