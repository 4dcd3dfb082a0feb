"""What every command module of the CLI shares: exit statuses and Ray's token-auth switch."""

import os

EXIT_USER_ERROR = 2
EXIT_RUN_FAILED = 1
EXIT_INTERRUPTED = 130


def use_token_auth() -> None:
    """Clusters started by `ray start` (Ray 2.60) want token auth; Ray reads this when imported."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")
