"""The central stream SQL side of edgewatch: a client for the Flink SQL Gateway, the
continuous jobs of ``deploy/central/*.sql`` and the ``edgewatch-central`` command.

Never imported by agent/ or bridge/ (DESIGN: central code lives beside models/).
"""

from models.central.gateway import GatewayUnavailableError, SqlClient, SqlEngineError

__all__ = ["GatewayUnavailableError", "SqlClient", "SqlEngineError"]
