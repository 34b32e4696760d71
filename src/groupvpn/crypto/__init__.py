"""Cryptography for IKEv1, GDOI and ESP, all on the `cryptography` package; nothing else imports it."""
