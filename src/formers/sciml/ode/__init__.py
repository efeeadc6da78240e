"""ODEFormer (arXiv 2310.05573): symbolic regression of dynamical systems from one trajectory.

Importing this package registers its parts and tasks (one import line per module below).
"""

from formers.sciml.ode import task  # noqa: F401  (registers the "ode" task)
