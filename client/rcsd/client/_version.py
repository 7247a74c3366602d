"""The project's one version string: both distributions, the services' /v1/info, the client, the images."""

__version__ = "0.1.0"
