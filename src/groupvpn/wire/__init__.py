"""Byte-exact codecs for ISAKMP, IKEv1 and GDOI messages, IP and ESP framing."""
