"""Results engine: parse any Parameter Golf log, tabulate, test significance, audit, report, submit."""
from results.errors import PgolfError

__all__ = ["PgolfError"]
