"""Cryptography for IKEv1, GDOI and ESP, all on the `cryptography` package; nothing else imports it.

dh       Diffie-Hellman groups (MODP 1/2/5/14/15/16, ECP 19/20/21) with fixed-length values
prf      hashes and the IKEv1 prf (HMAC), keyed by the Phase 1 Hash Algorithm
ikev1    SKEYID*, App. B key expansion, Phase 1/2 IVs, HASH_I/HASH_R, informational HASH(1)
cbc      DES/3DES/AES-CBC for ISAKMP messages and KEKs (zero padding)
gdoi     GROUPKEY-PULL HASH(1)-(4), KEK key material, RFC 8263 ack hashes
suites   ESP suites, per-SA packet contexts, IV sources
sig      GROUPKEY-PUSH signatures and the public keys they are verified with
errors   CryptoError and its subclasses
"""
