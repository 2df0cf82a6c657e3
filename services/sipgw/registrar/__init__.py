"""The registrar of the server's own phones (RFC 3261 section 10)."""

from services.sipgw.registrar.bindings import Binding, Bindings, OutOfOrder

__all__ = ["Binding", "Bindings", "OutOfOrder"]
