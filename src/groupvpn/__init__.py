"""groupvpn: a GDOI (RFC 6407) group controller/key server and group member."""

__version__ = "0.1.0"
