"""postprocessing: the autoreduction agent for neutron-scattering facilities."""

__version__ = "5.0.0"
