from collections.abc import Collection
from typing import Any

def fingerprint(scope: str, alias: str, body: dict[str, Any],
                ignore: Collection[str] = ()) -> bytes: ...
