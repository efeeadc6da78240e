"""PDE surrogates and physics-informed transformers: PINNsFormer (arXiv 2307.11833), FactFormer
(arXiv 2305.17560), IFactFormer-m (arXiv 2412.18840), baselines and the PDE data generators.

Importing this package registers its parts and tasks (one import line per module below).
"""
from formers.sciml.pde import navier_stokes  # noqa: F401
from formers.sciml.pde import factformer, ifactformer  # noqa: F401
from formers.sciml.pde import navier_stokes_3d  # noqa: F401
from formers.sciml.pde import grid_softmax, kolmogorov, turbulence3d  # noqa: F401
from formers.sciml.pde import burgers  # noqa: F401
from formers.sciml.pde import fno  # noqa: F401
from formers.sciml.pde import pinnsformer, pinn_baselines, pinn_problems, pinn_task  # noqa: F401
