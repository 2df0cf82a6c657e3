"""Errors the registry API returns.

ServiceError (services.runtime.errors)
+-- InvalidArgument
|   +-- InvalidNumber          reason INVALID_NUMBER (also INVALID_KIND, INVALID_DISPLAY_NAME)
|   +-- UnknownDepartment      reason UNKNOWN_DEPARTMENT
+-- NotFound
|   +-- NumberNotFound         reason NUMBER_NOT_FOUND
|   +-- NumberNotOwned         reason NUMBER_NOT_OWNED
|   +-- UnknownProvider        reason UNKNOWN_PROVIDER
+-- Unavailable
    +-- WatcherTooSlow         reason WATCHER_TOO_SLOW
"""

from services.runtime.errors import InvalidArgument, NotFound


class InvalidNumber(InvalidArgument):
    reason = "INVALID_NUMBER"


class UnknownDepartment(InvalidArgument):
    reason = "UNKNOWN_DEPARTMENT"


class InvalidPage(InvalidArgument):
    reason = "INVALID_PAGE"


class NumberNotFound(NotFound):
    reason = "NUMBER_NOT_FOUND"


class NumberNotOwned(NotFound):
    reason = "NUMBER_NOT_OWNED"


class UnknownProvider(NotFound):
    reason = "UNKNOWN_PROVIDER"
