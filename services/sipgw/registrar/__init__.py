"""The registrar of the server's own phones (RFC 3261 section 10)."""

from services.sipgw.registrar.bindings import Binding, Bindings, IntervalTooBrief, OutOfOrder
from services.sipgw.registrar.registrar import Decision, Registrar

__all__ = ["Binding", "Bindings", "Decision", "IntervalTooBrief", "OutOfOrder", "Registrar"]
