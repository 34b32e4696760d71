"""The key server (GCKS): group key lifecycle and the state that must survive a restart.

keys     GroupKeys: one group's current KEK/TEKs, rekey schedule and rollover (sans-IO),
         with its configuration (GroupConfig, KekConfig, TekConfig)
store    KeyStore: SQLite holding signing keys, KEKs, TEKs, push sequence numbers,
         every SPI ever issued and the member registry
"""
