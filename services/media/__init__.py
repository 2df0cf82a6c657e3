"""The media service's RTP data plane: worker processes that relay, play and record, driven by ``Plane``."""
