"""The group member: registration with key servers and the SA database the data plane reads.

sadb     the SA database: per group the KEK, the TEKs and the policy rules; snapshots for the data plane
member   the sans-IO core: registration per group VPN, server failover, interface and reload handling
views    what `show security group-vpn member ...` prints
"""
