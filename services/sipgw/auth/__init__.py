"""Who may use the gateway: phones prove their password (digest), servers prove the trunk secret."""

from services.sipgw.auth.digest import Challenge, DigestError, NonceFactory, parse_credentials, verify_response
from services.sipgw.auth.digest_client import ServerChallenge, answer_challenge, choose_challenge
from services.sipgw.auth.lockout import Lockout, Verdict
from services.sipgw.auth.trunk_proof import TrunkProof, TrunkProofError

__all__ = [
    "Challenge",
    "DigestError",
    "Lockout",
    "NonceFactory",
    "ServerChallenge",
    "TrunkProof",
    "TrunkProofError",
    "Verdict",
    "answer_challenge",
    "choose_challenge",
    "parse_credentials",
    "verify_response",
]
