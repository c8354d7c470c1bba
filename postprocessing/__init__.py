"""postprocessing: the autoreduction agent for neutron-scattering facilities."""

__version__ = "0.1.0"
