"""The SIP gateway: SIP stack, registrar, back-to-back agent and the inter-server trunk."""
